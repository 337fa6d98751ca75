"""The work directory as a resource: one live run at a time, writable, with room to save.

`WorkdirLock` takes an exclusive `fcntl.flock` on `WORKDIR/.lock` and writes the
holder's PID and hostname into it. The kernel drops a flock when its process
dies, however it dies (SIGKILL included), so a lock file left by a killed run
is stale by construction: the next run takes it over, and only a *live* holder
makes a second run fail (exit 2, naming the holder).

`check_writable` and `check_free_space` run before training, so an unusable
directory is reported in one line instead of as a failure at the first save.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path

from jaxtrain.util.errors import Arg, UserError

LOCK_FILE = ".lock"


class WorkdirLock:
    """An exclusive lock on a work directory, held for the life of a run."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"work directory '{self.path.parent}' is in use by a live run "
                                f"({holder}); wait for it to finish or pass another ", Arg("workdir")) from None
            raise UserError(f"work directory '{self.path.parent}': cannot lock {self.path} "
                            f"({e.strerror})") from None
        # Ours now: record who holds it, for the message a second run prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def check_writable(workdir: str | os.PathLike) -> Path:
    """Create `workdir` if needed and prove a file can be written, renamed and removed in it."""
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test.tmp"
        probe.write_text("ok")
        probe.replace(path / ".write-test")
        (path / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"work directory '{path}' is not writable ({e.strerror or e}); pass ",
                        Arg("workdir"), " with a writable path") from None
    return path


def check_free_space(workdir: str | os.PathLike, need_bytes: int, what: str = "checkpoints") -> None:
    """Fail before training when the work directory's file system cannot hold `need_bytes`."""
    free = shutil.disk_usage(workdir).free
    if free < need_bytes:
        raise UserError(f"work directory '{workdir}' has {format_bytes(free)} free but the run needs "
                        f"about {format_bytes(need_bytes)} for {what}; free space, lower "
                        f"checkpoint.keep, or pass another ", Arg("workdir"))


def explain_os_error(e: OSError, workdir: str | os.PathLike, doing: str) -> UserError | None:
    """A one-line UserError for a disk-full or permission failure while `doing`, else None (a bug)."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "the file system is read-only"}
    if e.errno not in reasons:
        return None
    return UserError(f"work directory '{workdir}': {doing} failed, {reasons[e.errno]}; free space or "
                     f"pass another ", Arg("workdir"), ", then resume with ", Arg("resume"))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
