"""A run's work directory while it trains: named, locked, its config and events written.

Every run goes through `RunDirectory` (a plain run, a resumed one, each point of a
vectorized sweep): one live run per directory, `config.yaml` written atomically, and a
run rejected before training (bad data, options that clash) removes what it wrote, so
that fixing the mistake and running the same command again works.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from jaxtrain.ckpt.checkpoint import has_checkpoint
from jaxtrain.config.schema import Config, dump_yaml
from jaxtrain.training.context import RunContext
from jaxtrain.util.errors import Arg, UserError
from jaxtrain.util.events import Console, JsonlWriter
from jaxtrain.util.clock import RunClock
from jaxtrain.util.files import write_json, write_text_atomic
from jaxtrain.util.workdir import WorkdirLock, check_writable


def default_workdir(cfg: Config, suffix: str = "") -> Path:
    """runs/<time>-<config name><suffix>: where a run writes unless given a --workdir."""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.name}{suffix}"


def prepare_workdir(path: str | Path) -> Path:
    workdir = Path(path)
    if (workdir / "config.yaml").exists():
        # Never overwrite a run's results by accident.
        raise UserError(f"work directory '{workdir}' already holds a run; pass a new ", Arg("workdir"),
                        " (or resume it with ", Arg("resume"), ")")
    return check_writable(workdir)


class RunDirectory:
    """`with RunDirectory(cfg, workdir, ...) as rd:` the directory of one run while it trains.

    Only the lead process (process 0) writes; every process gets a `ctx` (console,
    events, workdir, the run's clock) to train with. `resuming`: the directory already holds
    this run."""

    def __init__(self, cfg: Config, workdir: str | Path, *, resuming: bool = False, lead: bool = True,
                 console: Console | None = None, clock: RunClock | None = None):
        self.cfg, self.resuming, self.lead, self.clock = cfg, resuming, lead, clock
        # What the directory held before: a run rejected before training undoes its writes.
        self._existing = set(p.name for p in Path(workdir).iterdir()) if Path(workdir).is_dir() else None
        self.workdir = Path(workdir) if resuming or not lead else prepare_workdir(workdir)
        self._lock = None
        self._console = console or Console(cfg.logging.progress if lead else "none")
        self.ctx: RunContext | None = None
        self.keep = False  # set once a failure must leave what was written in place

    def __enter__(self) -> "RunDirectory":
        # One live run per directory (exit 2 otherwise); the kernel frees it if this process dies.
        self._lock = WorkdirLock(self.workdir).acquire() if self.lead else None
        if not self.resuming:  # a resume rewrites it only once its checkpoint fits
            self.write_config(self.cfg)
        events = JsonlWriter(self.workdir / "metrics.jsonl" if self.lead else None)
        self.ctx = RunContext(console=self._console, events=events, workdir=self.workdir,
                              clock=self.clock or RunClock())
        return self

    def write_config(self, cfg: Config) -> None:
        if self.lead:  # a kill never leaves half of it
            write_text_atomic(self.workdir / "config.yaml", dump_yaml(cfg))

    def write_summary(self, summary: dict) -> None:
        if self.lead:
            write_json(self.workdir / "summary.json", summary)
        logged = ("test", "train", "time", "perf")
        self.ctx.events.write("summary", **{k: v for k, v in summary.items() if k in logged})

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.ctx is not None:
            self.ctx.events.close()
        if self._lock is not None:
            self._lock.release()
        # Rejected before anything was trained: nothing is lost by removing what this run
        # wrote (the rejected config and empty logs).
        if (exc_type is not None and issubclass(exc_type, UserError) and not self.keep and not self.resuming
                and self.lead and not has_checkpoint(self.workdir / "checkpoints")):
            _undo_writes(self.workdir, self._existing)


def _undo_writes(workdir: Path, existing: set[str] | None) -> None:
    """Remove what a rejected run added to `workdir` (all of it, if the run created it)."""
    if existing is None:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for path in workdir.iterdir():
        if path.name in existing:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
