"""`jaxtrain launch -n N -- train CONFIG ...`: N local processes of one multi-process run.

Each process gets the coordinator address (a free loopback port) and its id in
the environment (distributed.py reads them), so the command after `--` runs
unchanged; it may also be any other command (`-- python my_script.py`), which
then calls `jaxtrain.parallel.distributed.initialize` itself (or `jaxtrain.train`).

Each process's stdout and stderr are read apart, line by line, and each whole line is
printed with one `[pI]` prefix (stdout to stdout, stderr to stderr), so lines of two
processes never mix. Gloo's connection chatter (`[Gloo] Rank 3 is connected to 7 peer
ranks...`, written by several threads at once and so often torn mid-line), its torn-off
pieces included, is dropped unless `--verbose`. The launcher exits with
the first non-zero status; the moment one process fails it ends the others
(each runs in its own process group: SIGTERM, then SIGKILL after a grace
period), so nothing is left running and nothing hangs in a collective.

Preemption is not a failure: a process that exits 143 (SIGTERM, after the run
agreed on a stopping step and saved) is followed by the others within
`PREEMPT_GRACE_S`, so the launcher waits for them. SIGTERM to the launcher
itself is passed on to every process, which then stop the same way; it exits 143.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jaxtrain.parallel.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from jaxtrain.util.errors import UserError
from jaxtrain.util.events import write_out

GRACE_S = 3.0  # JAX takes SIGTERM as a preemption notice and keeps going: then SIGKILL
PREEMPT_GRACE_S = 300.0  # a preempted run's processes save, then exit 143 on their own
PREEMPTED = 128 + signal.SIGTERM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_for(args: list[str], subcommands: frozenset[str]) -> list[str]:
    """A jaxtrain subcommand runs in this interpreter's jaxtrain; anything else runs as given."""
    if args and (args[0] in subcommands or args[0].startswith("-")):
        return [sys.executable, "-u", "-m", "jaxtrain", *args]
    return args


# Gloo's connection line, `[Gloo] Rank 3 is connected to 7 peer ranks. Expected number of
# connected peer ranks is : 7`, is written by several threads of a process at once, piece by
# piece, so its pieces interleave: `[Gloo] Rank 2 is connected to 7[Gloo] Rank  peer ranks. 3
# is connected`, then a line that ends another's, ` to 7 peer ranks. Expected number ...`,
# with no `[Gloo]` in it. A line made of nothing but these words and numbers is such a piece.
GLOO_WORDS = frozenset("Rank is connected to peer ranks. Expected number of : ranks".split())


def is_noise(line: str) -> bool:
    """Connection chatter of the collectives' transport, not the user's program: a line with
    Gloo's mark, or a torn-off piece of its connection line (its words and numbers only, one
    word at least: a bare number may be the user's)."""
    if "[Gloo]" in line:
        return True
    words = line.split()
    return any(w in GLOO_WORDS for w in words) and all(w in GLOO_WORDS or w.isdigit() for w in words)


def _pump(index: int, stream, out, lock: threading.Lock, verbose: bool) -> None:
    """Relay one stream of process `index`: each whole line, prefixed, in one write under the
    lock all relays share, so no two lines mix. Reading goes on after the reader of `out` went
    away (`launch ... | head`), so the process never blocks on a full pipe."""
    prefix, relaying = f"[p{index}] ", True
    for line in iter(stream.readline, ""):
        if not relaying or (not verbose and is_noise(line)):
            continue
        with lock:
            relaying = write_out(prefix + line.rstrip("\n") + "\n", out)
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _end_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process group still running, then SIGKILL what outlives the grace period."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()
    for p in procs:  # children a process left behind in its group
        _signal_group(p, signal.SIGKILL)


def _wait_all(procs: list[subprocess.Popen], preempted_at: list[float], lock: threading.Lock) -> int:
    """Wait for every process; the first non-zero status ends the others, except a preemption
    (143), which the others follow on their own (ended only after PREEMPT_GRACE_S)."""
    status, running = 0, set(range(len(procs)))
    while running:
        for i in sorted(running):
            code = procs[i].poll()
            if code is None:
                continue
            running.discard(i)
            code = code if code >= 0 else 128 - code  # killed by signal N -> 128 + N
            if code == PREEMPTED and not preempted_at:
                preempted_at.append(time.monotonic())
            if code != 0 and status == 0:
                status = code
                if code != PREEMPTED:
                    with lock:
                        print(f"jaxtrain launch: process {i} exited with status {code}; "
                              f"stopping the others", file=sys.stderr, flush=True)
                    _end_all(procs)
        if preempted_at and time.monotonic() - preempted_at[0] > PREEMPT_GRACE_S:
            _end_all(procs)
        time.sleep(0.05)
    return status or (PREEMPTED if preempted_at else 0)


def launch(num_processes: int, args: list[str], *, cpu_devices: int | None = None,
           gpus_per_process: int | None = None, port: int | None = None, out=None, err=None,
           verbose: bool = False, subcommands: frozenset[str] = frozenset()) -> int:
    """Run `args` as `num_processes` local processes of one run; return the exit status."""
    if num_processes < 1:
        raise UserError(f"launch -n {num_processes}: need at least one process")
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise UserError("launch: nothing to run; write e.g. `jaxtrain launch -n 2 -- train CONFIG`")
    out, err = out or sys.stdout, err or sys.stderr
    cmd = command_for(args, subcommands)
    address = f"127.0.0.1:{port or free_port()}"
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    lock = threading.Lock()
    preempted_at: list[float] = []  # when SIGTERM came to the launcher or a process exited 143

    def on_term(signum, frame):  # pass the preemption notice on; the processes stop together
        preempted_at.append(time.monotonic())
        for p in procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        for i in range(num_processes):
            env = dict(os.environ, **{ENV_COORDINATOR: address, ENV_NUM_PROCESSES: str(num_processes),
                                      ENV_PROCESS_ID: str(i), "PYTHONUNBUFFERED": "1"})
            if cpu_devices is not None:
                env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
            if gpus_per_process is not None:  # process i gets GPUs i*G .. i*G+G-1 (JAX reads this)
                env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
                    str(d) for d in range(i * gpus_per_process, (i + 1) * gpus_per_process))
            try:
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                     start_new_session=True)  # its own group: killable as a whole
            except OSError as e:
                raise UserError(f"launch: cannot start {cmd[0]!r}: {e.strerror}") from None
            procs.append(p)
            for stream, to in ((p.stdout, out), (p.stderr, err)):
                t = threading.Thread(target=_pump, args=(i, stream, to, lock, verbose), daemon=True)
                t.start()
                pumps.append(t)
        status = _wait_all(procs, preempted_at, lock)
    except KeyboardInterrupt:
        status = 130
    finally:
        _end_all(procs)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for t in pumps:
            t.join(timeout=2.0)
    return status
