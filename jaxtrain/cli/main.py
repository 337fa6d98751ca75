"""The command line: the only place that parses arguments.

Each subcommand is a (name, help, add_arguments, run) entry in COMMANDS; `run`
receives the parsed arguments and returns an exit status. User errors
(`UserError`) print one line on stderr and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from typing import Callable

# TensorFlow (used by the tf.data backend and tfds) is chatty on import; keep it quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config file or shipped config name "
                   "(default: the embedded digits MLP)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optimizer.learning_rate=0.01 (value is YAML)")
    p.add_argument("--workdir", help="run directory (default: runs/<time>-<config name>)")


def _train_resume_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint "
                   "(its config.yaml plus any --set; e.g. --set train.epochs=N extends it)")


def _train(args: argparse.Namespace) -> int:
    from jaxtrain.runs.api import train
    from jaxtrain.util.clock import since_jaxtrain_import
    train(args.config, workdir=args.workdir, overrides=args.overrides, resume=args.resume, verbose=2,
          clock=since_jaxtrain_import())
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="work directory of a finished training run")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", choices=["test", "val", "train"], help="a split of the run's data "
                       "(default test)")
    which.add_argument("--input", metavar="FILE", help="a labeled file to score instead (CSV with the "
                       "training columns and the target, .npz with 'x' and 'y', IDX images, or a folder "
                       "of images in class sub-folders)")


def _eval(args: argparse.Namespace) -> int:
    from jaxtrain.runs.api import evaluate
    name = "input" if args.input else (args.split or "test")
    from jaxtrain.util.events import write_out
    write_out(json.dumps({name: evaluate(args.run_dir, args.split, input=args.input, verbose=0)}, indent=2) + "\n")
    return 0


def _sweep_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a config key and its values; several --grid flags sweep every combination")
    p.add_argument("--vectorized", action="store_true",
                   help="train points that differ only in optimizer learning_rate/weight_decay/momentum "
                        "together in one compiled program (vmap)")


def _sweep(args: argparse.Namespace) -> int:
    from jaxtrain.runs.sweep import run_sweep
    run_sweep(args.config, args.grid, workdir=args.workdir, overrides=args.overrides,
              vectorized=args.vectorized, verbose=2)
    return 0


def _search_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC", required=True,
                   help="a config key and where to search it: loguniform(a,b), uniform(a,b), int(a,b) "
                        "or choice(v1,v2,...); one --space per key")
    p.add_argument("--trials", type=int, required=True, help="trials in all (a re-run continues up to N)")
    p.add_argument("--population", type=int, default=8,
                   help="trials asked and trained at a time, as one vectorized program when only optimizer "
                        "hyperparameters vary (default 8; 1: one at a time)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"], help="Optuna sampler (default tpe)")
    p.add_argument("--prune", action="store_true",
                   help="successive halving at epochs 1, 3, 9, ...: stop trials in the bottom two thirds")
    p.add_argument("--storage", help="Optuna storage: journal:PATH or an RDB URL, shared by workers "
                   "(default: WORKDIR/study.journal)")
    p.add_argument("--study", help="study name in the storage (default: the config's name)")
    p.add_argument("--seed", type=int, help="sampler seed (default train.seed)")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                   help="1: one line per trial (default); 2: also each trial's run and the results table")


def _search(args: argparse.Namespace) -> int:
    from jaxtrain.runs.search import search
    search(args.config, args.space, trials=args.trials, population=args.population, sampler=args.sampler,
           prune=args.prune, storage=args.storage, study=args.study, workdir=args.workdir,
           overrides=args.overrides, seed=args.seed, verbose=args.verbose)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="work directory of a finished training run")


def _report(args: argparse.Namespace) -> int:
    from jaxtrain.runs.report import write_report
    from jaxtrain.util.events import write_out
    for path in write_report(args.run_dir):
        write_out(f"wrote {path}\n")
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="work directory of a finished training run")
    p.add_argument("--input", required=True, help="CSV with the training feature columns "
                   "(or .npz with 'x', an IDX images file, a folder of PNG/JPEG images or one image)")
    p.add_argument("--output", help="CSV to write (default: print to stdout)")
    p.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                   help="copy this column of the input CSV (an ID, say) into the output; repeatable")
    p.add_argument("--full-precision", action="store_true",
                   help="print probabilities with every digit (default: 6 significant digits)")


def _predict(args: argparse.Namespace) -> int:
    from jaxtrain.runs.predict import predict_file
    predict_file(args.run_dir, args.input, args.output, keep=args.keep, full_precision=args.full_precision)
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="work directory of a finished training run")
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="model format (default onnx)")
    p.add_argument("--output", help="model file to write (default RUN_DIR/model.onnx); its input "
                   "contract goes beside it, same name with .json")


EXPORT_FORMATS = ("onnx",)  # `--format F` runs runs/export.py:export_F; argparse refuses others (exit 2)


def _export(args: argparse.Namespace) -> int:
    from jaxtrain.runs import export
    model, contract = getattr(export, f"export_{args.format}")(args.run_dir, args.output)
    print(f"wrote {model} and {contract}", file=sys.stderr)
    return 0


def _launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--num-processes", type=int, required=True, help="local processes to start")
    p.add_argument("--cpu-devices", type=int, help="simulated CPU devices per process (JAX_NUM_CPU_DEVICES)")
    p.add_argument("--gpus-per-process", type=int, help="give process i its own GPUs (JAX_LOCAL_DEVICE_IDS)")
    p.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--verbose", action="store_true", help="also show the processes' connection chatter (Gloo)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="a jaxtrain command (train CONFIG ...) or any program, after --")


def _launch(args: argparse.Namespace) -> int:
    from jaxtrain.cli.launch import launch
    return launch(args.num_processes, args.cmd, cpu_devices=args.cpu_devices,
                  gpus_per_process=args.gpus_per_process, port=args.port, verbose=args.verbose,
                  subcommands=frozenset(name for name, *_ in COMMANDS))


def _profile_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--steps", type=int, default=200, help="training steps to run and profile (default 200)")


def _profile(args: argparse.Namespace) -> int:
    from jaxtrain.runs.api import train
    from jaxtrain.runs.rundir import default_workdir
    from jaxtrain.config.schema import load_config
    from jaxtrain.util.errors import UserError
    if args.steps < 2:
        raise UserError(f"--steps {args.steps}: profile needs at least 2 steps (one warm-up call)")
    from jaxtrain.util.clock import since_jaxtrain_import
    workdir = args.workdir or default_workdir(load_config(args.config, args.overrides), "-profile")
    train(args.config, workdir=workdir, overrides=[
        *args.overrides, "train.profile=true", f"train.profile_steps={args.steps}",
        "checkpoint.enabled=false"], verbose=2, clock=since_jaxtrain_import())
    return 0


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: list[Command] = [
    ("train", "train a model (default: the digits MLP, offline)", _train_resume_args, _train),
    ("eval", "re-evaluate a finished run's saved parameters", _eval_args, _eval),
    ("profile", "run N steps and break down the step time: profile CONFIG [--set k=v] [--steps N]",
     _profile_args, _profile),
    ("sweep", "train every point of a hyperparameter grid", _sweep_args, _sweep),
    ("search", "sample hyperparameters with Optuna, trials trained as vectorized populations",
     _search_args, _search),
    ("report", "plot a finished run: curves, sample predictions, confusion matrix", _report_args, _report),
    ("predict", "apply a finished run to new data, write predictions as CSV", _predict_args, _predict),
    ("export", "write a finished run's network as ONNX, normalization folded in", _export_args, _export),
    ("launch", "run N local processes of one multi-process run: launch -n N -- train CONFIG",
     _launch_args, _launch),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxtrain", description="Fast JAX training from the command line.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks for errors")
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxtrain.util.errors import NonFiniteError, Preempted, UserError, leave_after_error
    from jaxtrain.util.secrets import mask_secrets
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return int(e.code or 0)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"jaxtrain: error: {mask_secrets(e.cli)}", file=sys.stderr)  # a storage URL's password
        leave_after_error(2)  # multi-process: leave now, don't wait for the others
        return 2
    except NonFiniteError as e:  # not the user's typo: the run itself went wrong (README: Reliability)
        if args.debug:
            raise
        print(f"jaxtrain: training failed: {e}", file=sys.stderr)
        return 3
    except Preempted as e:
        print(f"jaxtrain: {e.cli}", file=sys.stderr)
        return 128 + e.signum
    except MemoryError:  # what the memory estimate (memory.py) did not foresee: still one line
        if args.debug:
            raise
        print("jaxtrain: error: out of host memory; lower data.batch_size, the model size or the data "
              "size (--debug shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxtrain: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    from jaxtrain.cli.fatal_guard import FatalGuard, wanted
    guard = FatalGuard() if wanted() else None  # several CPU devices: XLA's abort becomes one line
    try:
        status = main()
    finally:
        if guard is not None:
            guard.close()
    exit_without_teardown(status)


def exit_without_teardown(status: int) -> None:
    """Exit as Python would, less the interpreter's teardown of every module, which took
    seconds on 2 loaded cores after JAX was imported (bench/exit_time.py). Non-daemon threads
    are joined and exit handlers run (jax.distributed's shutdown among them) first; the
    standard streams are flushed. Only the command line exits so: `main()` returns."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    from jaxtrain.util.events import write_out
    write_out("", sys.stdout)  # a reader gone by now (`| head`) changes nothing: the run is done
    write_out("", sys.stderr)
    os._exit(status)


if __name__ == "__main__":
    entry()
