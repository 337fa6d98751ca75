"""The command line: the only place that parses arguments.

Each subcommand is a (name, help, add_arguments, run) entry in COMMANDS; `run`
receives the parsed arguments and returns an exit status. User errors
(`UserError`) print one line on stderr and exit 2; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def _train(args: argparse.Namespace) -> int:
    from jaxtrain.api import train
    train(args.config, workdir=args.workdir, overrides=args.overrides)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="work directory of a finished training run")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])


def _eval(args: argparse.Namespace) -> int:
    from jaxtrain.api import evaluate
    print(json.dumps({args.split: evaluate(args.run_dir, args.split)}, indent=2))
    return 0


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: list[Command] = [
    ("train", "train a model (default: the digits MLP, offline)", _train_args, _train),
    ("eval", "re-evaluate a finished run's saved parameters", _eval_args, _eval),
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
    from jaxtrain.errors import UserError
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
        print(f"jaxtrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxtrain: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
