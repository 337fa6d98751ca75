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

It ends with one line `MODULE: killed K of N (S survived, T timeout, ...)`; `mutmut show
NAME` in the scratch folder prints a survivor's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
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


def counts(folder: pathlib.Path) -> dict:
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=folder, check=False,
                   stdout=subprocess.DEVNULL)
    stats = folder / "mutants" / "mutmut-cicd-stats.json"
    return json.loads(stats.read_text()) if stats.exists() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="a key of [tool.jaxtrain.mutation] in pyproject.toml")
    parser.add_argument("--list", action="store_true", help="the modules and the tests each one runs")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (mutmut's --max-children)")
    parser.add_argument("--dir", type=pathlib.Path, help="scratch folder (default: a new temporary one)")
    args = parser.parse_args()
    table = modules()
    if args.list or not args.module:
        for module, tests in table.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    if args.module not in table:
        print(f"mutate: {args.module} is not in [tool.jaxtrain.mutation]; known: {', '.join(table)}",
              file=sys.stderr)
        return 2
    folder = args.dir or pathlib.Path(tempfile.mkdtemp(prefix="jaxtrain-mutmut-"))
    scratch_copy(folder, args.module, table[args.module])
    # No PYTHONPATH: mutmut puts mutants/ first on the path itself (and drops a path to the original
    # code); code run only in a subprocess (the CLI's tests) is not covered, so not mutated either.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_NUM_CPU_DEVICES="8", XDG_CACHE_HOME=str(folder / "cache"))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children)],
                   cwd=folder, env=env, check=False)
    seconds = time.monotonic() - start
    subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=folder, env=env, check=False)
    c = counts(folder)
    others = ", ".join(f"{v} {k}" for k, v in c.items() if k not in ("killed", "total") and v)
    print(f"{args.module}: killed {c.get('killed', 0)} of {c.get('total', 0)} ({others}) "
          f"in {seconds:.0f} s; scratch folder {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
