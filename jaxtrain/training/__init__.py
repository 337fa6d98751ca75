"""A training run: the loop, the evaluator, preflight checks and the hooks that watch it."""
