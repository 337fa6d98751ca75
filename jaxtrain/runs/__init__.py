"""Runs as users see them: work directories, train/resume/evaluate, predict, report, sweeps."""
