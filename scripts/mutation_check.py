"""Plant known bugs one at a time and check that the tests catch each one.

A developer tool, not part of CI. Each mutant names a file, a piece of its text, the text
to plant instead, and the few tests that must fail with it. For each mutant the repository
(jaxtrain/, tests/, configs/, pyproject.toml) is copied into a temporary folder, the text is
replaced there (it must occur exactly once), and only the mutant's tests are run: the
mutant is caught when pytest reports a failing test (exit status 1). A collection error
or a crash is reported as an error, not as a catch.

    python scripts/mutation_check.py              # every mutant
    python scripts/mutation_check.py --list       # names and the tests each one runs
    python scripts/mutation_check.py step_ nan    # mutants whose name contains any word given
    python scripts/mutation_check.py --baseline   # first check that each selection passes unmutated

Exit status 0 when every mutant selected was caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
COPIED = ("jaxtrain", "tests", "configs", "pyproject.toml")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str           # relative to the repository root
    original: str       # must occur exactly once in the file
    planted: str
    tests: tuple[str, ...]   # pytest node ids or files; at least one must fail
    why: str = ""


MUTANTS: list[Mutant] = [
    # ---- the six bugs an audit found escaping the suite
    Mutant("accuracy_counts_padding", "jaxtrain/engine/step.py",
           'm["correct"] = jnp.sum((jnp.argmax(outputs, -1) == y) * mask)',
           'm["correct"] = jnp.sum(jnp.argmax(outputs, -1) == y).astype(jnp.float32)',
           ("tests/test_step_oracle.py::test_classification_counts_only_the_real_rows_of_a_padded_batch",),
           "training accuracy counted over the padded rows"),
    Mutant("normalizer_fitted_on_every_split", "jaxtrain/data/preprocess.py",
           '_fit_outputs(raw, parts["train"], enc["train"], stats, cfg)',
           '_fit_outputs(raw, parts["train"], np.concatenate(list(enc.values())), stats, cfg)',
           ("tests/test_data_sources.py::test_idx_normalizer_is_fitted_on_the_training_images_only",
            "tests/test_data_sources.py::test_npz_normalizer_is_fitted_on_train_not_on_val_or_test",
            "tests/test_data_tf.py::test_tfds_normalizer_is_fitted_on_the_training_split_only"),
           "image/array normalizer fitted on train+val+test"),
]


def copy_repo(dest: pathlib.Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def plant(repo: pathlib.Path, m: Mutant) -> None:
    path = repo / m.file
    text = path.read_text()
    found = text.count(m.original)
    if found != 1:
        raise SystemExit(f"mutant {m.name}: the original text occurs {found} times in {m.file}, "
                         "expected once; update the mutant to the current code")
    path.write_text(text.replace(m.original, m.planted))


def run_tests(repo: pathlib.Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def check(m: Mutant, baseline: bool, timeout: float) -> str:
    """'caught', 'MISSED' or 'ERROR ...' for one mutant."""
    with tempfile.TemporaryDirectory(prefix="jaxtrain-mutant-") as tmp:
        repo = pathlib.Path(tmp)
        copy_repo(repo)
        if baseline:
            rc, last = run_tests(repo, m.tests, timeout)
            if rc != 0:
                return f"ERROR the tests fail without the mutant (exit {rc}: {last})"
        plant(repo, m)
        rc, last = run_tests(repo, m.tests, timeout)
    if rc == 1:
        return "caught"
    if rc == 0:
        return "MISSED"
    return f"ERROR exit {rc}: {last}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true",
                        help="run each selection unmutated first (it must pass)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file} ({m.why})\n    " + "\n    ".join(m.tests))
        return 0
    if not chosen:
        print("no mutant matches", file=sys.stderr)
        return 2
    missed = 0
    started = time.perf_counter()
    for i, m in enumerate(chosen, 1):
        t0 = time.perf_counter()
        verdict = check(m, args.baseline, args.timeout)
        missed += verdict != "caught"
        print(f"[{i}/{len(chosen)}] {m.name:40s} {verdict}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} mutants caught in {time.perf_counter() - started:.0f} s")
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
