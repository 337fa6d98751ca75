"""Readers of what runs write, for the tests: a sweep's results.csv, a profiler trace's steps, a
run clock's reading; and the fake clock the timing tests drive by hand."""

import csv
from pathlib import Path


def read_results(root) -> list[dict[str, str]]:
    """The rows of a sweep's results.csv, as text."""
    with open(Path(root) / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def trace_step_annotations(trace_dir) -> list[int]:
    """The step numbers of the `train` StepTraceAnnotations in a written trace."""
    from jax.profiler import ProfileData
    steps = []
    for path in sorted(Path(trace_dir).rglob("*.xplane.pb")):
        data = ProfileData.from_file(str(path))
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name == "train":
                        stats = dict(event.stats)
                        if "step_num" in stats:
                            steps.append(int(stats["step_num"]))
    return sorted(set(steps))


def clock_total_s(clock) -> float:
    """Seconds since a RunClock's start, read from its start and now (not from its phases, which
    the tests check add up to it)."""
    return clock.mark().at - clock.start


class FakeClock:
    """A clock that moves only when told: `advance(seconds)`."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def straight_and_resumed(cfg, tmp_path, dropped_steps) -> tuple[Path, Path]:
    """A run trained straight into tmp_path/full, and its copy in tmp_path/cut with the
    checkpoints of `dropped_steps` and summary.json removed, then resumed: the two directories."""
    import shutil

    from jaxtrain import resume, train
    full, cut = Path(tmp_path) / "full", Path(tmp_path) / "cut"
    train(cfg, workdir=full)
    shutil.copytree(full, cut)
    for step in dropped_steps:
        shutil.rmtree(cut / "checkpoints" / str(step))
    (cut / "summary.json").unlink()
    resume(cut)
    return full, cut
