"""Crash trials: SIGKILL a training run at random moments, resume it, and compare with a clean run.

    python tests/crash_trials.py --trials 20 [--seed 0] [--workdir /tmp/crash]

Each trial starts `jaxtrain train` as a subprocess on a small streamed run with a
checkpoint every few steps, and kills it with SIGKILL: at a random moment from
start-up on, at a random moment once training is under way, or (half the kills)
the moment a checkpoint save is in flight (an `*.orbax-checkpoint-tmp*` directory
appears). With probability
1/2 the resumed run is killed once more. Then `jaxtrain train --resume DIR` runs
to the end, and the trial checks:

- every resume after a kill starts (exit 0, or killed again by the trial): the
  work directory is never left unusable, and a stale lock never blocks it;
- it continues from the latest complete checkpoint, and only the save that was in
  flight (if any) is lost: the complete checkpoints are the last `keep` multiples
  of `every_steps` up to the resumed step;
- the finished run's parameters are bit-identical to an uninterrupted run's, and
  its summary reports the same test metrics.

Lost work per kill: the run prints a progress line after every compiled call, so the
trial knows the step it had reached when it died, and `lost_steps` = reached step -
latest complete checkpoint. With synchronous saves (the default) that is at most one
interval; with asynchronous saves (`--async-saves`) training runs on while a save is
written, so a kill during a save can cost up to two.
`tests/test_reliability_crash.py` runs a few trials; this script runs as many as asked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EVERY = 10  # checkpoint.every_steps
KEEP = 3
TOTAL_STEPS = 160  # 4 epochs of 40 steps
SYNC_SAVES = True  # --async-saves: checkpoint.async_save=true
MODES = ["anytime", "training", "mid-save", "mid-save"]  # when to kill; half of the kills hit a save
# Digits, streamed from the host (on_device_fraction 0), 40 steps per epoch, 5 steps per call.
OVERRIDES = ["train.epochs=4", "train.on_device_fraction=0", "train.steps_per_call=5",
             "parallel.data_axis_size=1", f"checkpoint.every_steps={EVERY}", f"checkpoint.keep={KEEP}",
             "checkpoint.every_seconds=null",
             "logging.progress=bar", "data.batch_size=32"]  # bar: a progress line after every call


def env() -> dict:
    e = dict(os.environ)
    e.update(JAX_NUM_CPU_DEVICES="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return e


def jaxtrain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxtrain", *args]


def train_cmd(workdir: Path, extra: list[str] = ()) -> list[str]:
    sets = [a for o in [*OVERRIDES, *extra] for a in ("--set", o)]
    return jaxtrain_cmd("train", *sets, "--workdir", str(workdir))


def resume_cmd(workdir: Path) -> list[str]:
    return jaxtrain_cmd("train", "--resume", str(workdir))


def final_params(workdir: Path) -> dict[str, np.ndarray]:
    from jaxtrain.ckpt.params import load_named_params
    params, _ = load_named_params(workdir)
    return params


def checkpoint_steps(workdir: Path) -> tuple[list[int], list[int]]:
    """(complete steps, steps with any directory incl. in-flight saves) in workdir/checkpoints."""
    d = workdir / "checkpoints"
    if not d.is_dir():
        return [], []
    complete, any_dir = [], []
    for p in d.iterdir():
        m = re.match(r"^(\d+)(\.orbax-checkpoint-tmp.*)?$", p.name)
        if m:
            any_dir.append(int(m.group(1)))
            if not m.group(2):
                complete.append(int(m.group(1)))
    return sorted(complete), sorted(any_dir)


def run_and_kill(cmd: list[str], workdir: Path, rng: random.Random, train_s: float, mode: str) -> dict:
    """Start `cmd` and SIGKILL it. mode: 'anytime' (a random moment from start-up on),
    'training' (a random moment after its first checkpoint appeared), 'mid-save' (as soon
    as a save is in flight)."""
    before = set(checkpoint_steps(workdir)[1])  # left by an earlier kill: not this run's saves
    target = rng.randrange(EVERY, TOTAL_STEPS + 1, EVERY)  # mid-save: the save to interrupt
    progress_file = workdir.parent / f"{workdir.name}.stdout"
    stdout = open(progress_file, "w")
    proc = subprocess.Popen(cmd, env=env(), stdout=stdout, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    deadline = t0 + rng.uniform(0.0, 3 * train_s) if mode == "anytime" else None
    how = mode
    while proc.poll() is None:
        now = time.monotonic()
        complete, any_dir = checkpoint_steps(workdir)
        in_flight = set(any_dir) - set(complete) - before
        if mode == "mid-save" and any(step >= target for step in in_flight):
            break
        if mode == "training" and deadline is None and set(any_dir) - before:  # training has begun: kill within its remaining span
            deadline = now + rng.uniform(0.0, train_s)
        if deadline is not None and now >= deadline:
            break
        time.sleep(0.002)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)  # only the process this trial started
    proc.wait()
    stdout.close()
    complete, _ = checkpoint_steps(workdir)
    # The newest progress line the run printed: calls it had dispatched when it died.
    reached = progress_step(progress_file.read_text(errors="replace"))
    return {"how": how if not finished else "finished before the kill", "at_s": round(time.monotonic() - t0, 2),
            "complete": complete, "reached_step": reached,
            "lost_steps": max(0, reached - (complete[-1] if complete else 0)), "rc": proc.returncode}


def progress_step(stdout: str) -> int:
    """The global step of the last progress line: 'epoch E [###...] done/total' (0 if none)."""
    found = re.findall(r"epoch (\d+) \[[#.]*\] (\d+)/(\d+)", stdout)
    if not found:
        return 0
    epoch, done, total = map(int, found[-1])
    return (epoch - 1) * total + done


def resumed_step(stdout: str) -> int | None:
    m = re.search(r"resume: continuing from checkpoint step (\d+)", stdout)
    return int(m.group(1)) if m else (0 if "resume: no complete checkpoint" in stdout else None)


def trial(i: int, root: Path, rng: random.Random, reference: dict, train_s: float, log,
          modes: list[str] = MODES) -> dict:
    workdir = root / f"trial{i:02d}"
    shutil.rmtree(workdir, ignore_errors=True)
    problems, kills = [], []
    cmd = train_cmd(workdir)
    for _ in range(1 + (rng.random() < 0.5)):  # kill the run, and half the time its resume too
        kill = run_and_kill(cmd, workdir, rng, train_s, rng.choice(modes))
        kills.append(kill)
        # Killed before the run wrote its config: nothing to resume, start it again.
        cmd = resume_cmd(workdir) if (workdir / "config.yaml").is_file() else train_cmd(workdir)
        if kill["how"] == "finished before the kill":
            break
        # A sync save blocks training: at most one interval after the last complete save.
        # An async save lets training run on meanwhile, so losing it costs up to two.
        if kill["lost_steps"] > EVERY * (1 if SYNC_SAVES else 2):
            problems.append(f"lost {kill['lost_steps']} steps (checkpoint interval {EVERY})")
        complete = kill["complete"]
        if complete:
            top = complete[-1]
            wanted = list(range(EVERY, top + 1, EVERY))[-KEEP:]
            if not set(wanted) <= set(complete):
                problems.append(f"complete checkpoints {complete}: a save before step {top} is missing")
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        problems.append(f"final run exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    last = kills[-1]
    step = resumed_step(out.stdout)
    if "--resume" in cmd and last["how"] != "finished before the kill":
        want = last["complete"][-1] if last["complete"] else 0
        if step != want:
            problems.append(f"resumed from step {step}, latest complete checkpoint was {want}")
    summary_path = workdir / "summary.json"
    if not summary_path.is_file():
        problems.append("no summary.json after the final run")
    else:
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed":
            problems.append(f"summary status {summary.get('status')}")
        if summary["test"] != reference["summary"]["test"]:
            problems.append(f"test metrics differ: {summary['test']} vs {reference['summary']['test']}")
        params = final_params(workdir)
        for name, ref in reference["params"].items():
            if not np.array_equal(params[name], ref):
                problems.append(f"parameter {name} differs from the uninterrupted run "
                                f"(max abs diff {np.max(np.abs(params[name] - ref)):.3g})")
    result = {"trial": i, "kills": kills, "resumed_from": step, "ok": not problems, "problems": problems}
    log(json.dumps(result))
    return result


def reference_run(root: Path) -> dict:
    """The uninterrupted run, and how long its training part lasts (first checkpoint to exit)."""
    workdir = root / "reference"
    shutil.rmtree(workdir, ignore_errors=True)
    proc = subprocess.Popen(train_cmd(workdir), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = None
    while proc.poll() is None:
        if first is None and checkpoint_steps(workdir)[1]:
            first = time.monotonic()
        time.sleep(0.005)
    end = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed: {proc.stderr.read()[-2000:]}")
    return {"params": final_params(workdir), "summary": json.loads((workdir / "summary.json").read_text()),
            "train_s": max(0.2, end - (first or end))}


def run_trials(n: int, root: Path, seed: int = 0, log=print) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    reference = reference_run(root)
    log(f"reference run: training part {reference['train_s']:.1f} s")
    return run_trials_with(reference, n, root, seed, log=log)


def run_trials_with(reference: dict, n: int, root: Path, seed: int = 0, modes: list[str] = MODES,
                    log=print) -> list[dict]:
    rng = random.Random(seed)
    return [trial(i, root, rng, reference, reference["train_s"], log, modes) for i in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where trial runs go (default: a temporary directory, removed)")
    p.add_argument("--async-saves", action="store_true", help="checkpoint.async_save=true")
    args = p.parse_args()
    if args.async_saves:
        global SYNC_SAVES
        SYNC_SAVES = False
        OVERRIDES.append("checkpoint.async_save=true")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="crash-trials-"))
    try:
        results = run_trials(args.trials, root, args.seed)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    kills = [k for r in results for k in r["kills"]]
    lost = [k["lost_steps"] for k in kills]
    print(f"{sum(r['ok'] for r in results)}/{len(results)} trials ok; {len(kills)} kills "
          f"({sum(k['how'] == 'mid-save' for k in kills)} during a save); work lost per kill: max "
          f"{max(lost, default=0)} steps, mean {np.mean(lost) if lost else 0:.1f} (checkpoint interval "
          f"{EVERY}, {OVERRIDES[2].split('=')[1]} steps per call; async saves: {not SYNC_SAVES})")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
