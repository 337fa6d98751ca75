"""Mutation testing with mutmut 3 on one module (or package) of jaxtrain and the tests that cover it.

mutmut reads its settings from `[tool.mutmut]` in pyproject.toml and writes `mutants/`
in the directory it runs in. To run one module at a time (and several at once, apart),
this script copies the repository (jaxtrain/, tests/, configs/, pyproject.toml) into a
scratch folder, points `[tool.mutmut]`'s `source_paths` and
`pytest_add_cli_args_test_selection` there at the module and at the tests that
`[tool.jaxtrain.mutation]` lists for it, and runs `mutmut run` with 8 simulated CPU
devices and a private XDG_CACHE_HOME (the user's cache is never touched).

    python scripts/mutate.py --list                        # the modules and their tests
    python scripts/mutate.py jaxtrain/util/clock.py        # mutmut run, then the survivors
    python scripts/mutate.py jaxtrain/util/clock.py --children 1 --dir /tmp/mm-clock
    python scripts/mutate.py jaxtrain/engine --sample 60 --seed 1   # a random sample of 60 mutants
    python scripts/mutate.py jaxtrain/data/clean.py --mutants 'jaxtrain.data.clean.x_clip_*'

It lists the survivors and ends with one line `MODULE: killed K of N; S survived, ...`
(timeouts count as killed, as in mutmut's own score); `mutmut show
NAME` in the scratch folder prints a survivor's diff.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
COPIED = ("jaxtrain", "tests", "configs", "pyproject.toml")


def modules() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["jaxtrain"]["mutation"]


def selection(module: str) -> list[str]:
    """The tests `[tool.jaxtrain.mutation]` lists for `module`, and tests/test_mutants_<name>.py
    (the tests written against its surviving mutants) when there is one."""
    tests = list(modules()[module])
    own = f"tests/test_mutants_{pathlib.Path(module).stem}.py"
    if (ROOT / own).exists() and own not in tests:
        tests.append(own)
    return tests


def scratch_copy(target: pathlib.Path, module: str, tests: list[str]) -> None:
    """The repository in `target`, its `[tool.mutmut]` pointed at `module` and `tests`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = ROOT / name, target / name
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    text = (target / "pyproject.toml").read_text()
    text = re.sub(r"(?m)^source_paths = .*$", f"source_paths = {json.dumps([module])}", text, count=1)
    text = re.sub(r"(?m)^pytest_add_cli_args_test_selection = .*$",
                  f"pytest_add_cli_args_test_selection = {json.dumps(tests)}", text, count=1)
    (target / "pyproject.toml").write_text(text)


def all_mutants(folder: pathlib.Path) -> dict[str, int | None]:
    """Every mutant mutmut generated in `folder`, with its exit code (None: not run yet)."""
    found: dict[str, int | None] = {}
    for meta in sorted((folder / "mutants").rglob("*.py.meta")):
        found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def verdicts(codes: dict[str, int | None]) -> dict[str, list[str]]:
    """The mutants by mutmut's verdict (killed, survived, timeout, no tests, ...)."""
    from mutmut.stats import status_by_exit_code  # the dev extra; imported here so --list runs without it

    by: dict[str, list[str]] = {}
    for name, code in codes.items():
        by.setdefault("not checked" if code is None else status_by_exit_code[code], []).append(name)
    return by


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="a key of [tool.jaxtrain.mutation] in pyproject.toml")
    parser.add_argument("--list", action="store_true", help="the modules and the tests each one runs")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (mutmut's --max-children)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sample", type=int, default=0,
                       help="test a random sample of this many mutants (default: all of them)")
    which.add_argument("--mutants", nargs="+", default=[],
                       help="test only these mutants (names as mutmut prints them; * matches any text)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--dir", type=pathlib.Path,
                        help="scratch folder (default: a new temporary one; an earlier run's results there are "
                             "removed, so that none of its verdicts stands for the tests as they are now)")
    args = parser.parse_args()
    table = modules()
    if args.list or not args.module:
        for module in table:
            print(f"{module}: {' '.join(selection(module))}")
        return 0
    if args.module not in table:
        print(f"mutate: {args.module} is not in [tool.jaxtrain.mutation]; known: {', '.join(table)}",
              file=sys.stderr)
        return 2
    folder = args.dir or pathlib.Path(tempfile.mkdtemp(prefix="jaxtrain-mutmut-"))
    shutil.rmtree(folder / "mutants", ignore_errors=True)
    scratch_copy(folder, args.module, selection(args.module))
    # No PYTHONPATH: mutmut puts mutants/ first on the path itself (and drops a path to the original
    # code); code run only in a subprocess (the CLI's tests) is not covered, so not mutated either.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Each mutant's tests run in a process forked from mutmut's fork server, which has imported
    # the tests but never started JAX (a process forked after XLA started its threads can
    # deadlock). So every mutant compiles again: XLA's persistent cache, shared by all of them,
    # turns the programs a mutant does not change into a disk read.
    env.update(JAX_NUM_CPU_DEVICES="8", XDG_CACHE_HOME=str(folder / "cache"),
               JAX_COMPILATION_CACHE_DIR=str(folder / "xla-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    mutmut = [sys.executable, "-m", "mutmut"]
    start = time.monotonic()
    chosen: list[str] = list(args.mutants)
    if args.sample and not chosen:
        # A name no mutant has: mutmut generates the mutants and records which tests cover which
        # function, then stops ("nothing matches"); the sample is then drawn from what it generated.
        subprocess.run(mutmut + ["run", "--max-children", str(args.children), "jaxtrain.no-such-mutant"],
                       cwd=folder, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        generated = sorted(all_mutants(folder))
        if not generated:
            print(f"mutate: mutmut generated no mutants in {folder}", file=sys.stderr)
            return 1
        chosen = sorted(random.Random(args.seed).sample(generated, min(args.sample, len(generated))))
    ran = subprocess.run(mutmut + ["run", "--max-children", str(args.children)] + chosen,
                         cwd=folder, env=env, check=False)
    seconds = time.monotonic() - start
    codes = all_mutants(folder)
    if chosen:
        codes = {name: code for name, code in codes.items()
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in chosen)}
        if not codes:
            print(f"mutate: no mutant of {args.module} matches {' '.join(chosen)}", file=sys.stderr)
            return 2
    if ran.returncode:  # e.g. "Failed to run clean test": the tests fail without any mutant
        print(f"mutate: mutmut stopped with status {ran.returncode} (its output is above); "
              f"scratch folder {folder}", file=sys.stderr)
        return 1
    by = verdicts(codes)
    for name in sorted(by.get("survived", []) + by.get("no tests", [])):
        print(f"  {'survived' if name in by.get('survived', []) else 'no tests'}: {name}")
    killed = len(by.get("killed", [])) + len(by.get("timeout", []))
    others = ", ".join(f"{len(v)} {k}" for k, v in sorted(by.items()) if k != "killed")
    drawn = (f" (a sample drawn with seed {args.seed} from {len(all_mutants(folder))})" if args.sample and not args.mutants
             else f" (those named, of {len(all_mutants(folder))})" if chosen else "")
    print(f"{args.module}: killed {killed} of {len(codes)}{drawn}; {others or 'none other'}; "
          f"{seconds:.0f} s; scratch folder {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
