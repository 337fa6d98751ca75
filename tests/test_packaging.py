"""A real wheel, built from a copy of the source tree and inspected: every module and subpackage,
the shipped configs, the built-in tables, the entry point and the dependencies; then jaxtrain is
imported from the unpacked wheel alone and finds its configs and tables there."""

import configparser
import email.parser
import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXTRAS_ONLY = ("tensorflow", "scikit-learn", "matplotlib", "tensorboardx")


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


SETUPTOOLS_NEEDED = int(tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"][0]
                        .split(">=")[1].split(".")[0])


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxtrain").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "jaxtrain.configs" in listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel `pip wheel` builds from a copy of what the sdist would hold (no build/ in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("jaxtrain", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    # The build backend pyproject.toml asks for, from PyPI, unless this environment has it.
    isolation = ["--no-build-isolation"] if _setuptools_major() >= SETUPTOOLS_NEEDED else []
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("jaxtrain-*.whl")
    return path


def _names(wheel: pathlib.Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_holds_every_module(wheel):
    names = _names(wheel)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxtrain").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules and modules <= names, sorted(modules - names)


def test_wheel_holds_the_configs_and_tables_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        for src, dest in [*((p, f"jaxtrain/configs/{p.name}") for p in (ROOT / "configs").glob("*.yaml")),
                          *((p, f"jaxtrain/data/tables/{p.name}")
                            for p in (ROOT / "jaxtrain/data/tables").glob("*.npz"))]:
            assert z.read(dest) == src.read_bytes(), dest
    names = _names(wheel)
    assert {"jaxtrain/configs/digits_mlp.yaml", "jaxtrain/configs/mnist_mlp.yaml"} <= names
    assert {f"jaxtrain/data/tables/{t}.npz" for t in ("digits", "iris", "wine", "breast_cancer",
                                                      "diabetes")} <= names


def test_wheel_entry_point_and_dependencies(wheel):
    with zipfile.ZipFile(wheel) as z:
        info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        entry = configparser.ConfigParser()
        entry.read_string(z.read(f"{info}/entry_points.txt").decode())
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
    assert entry["console_scripts"]["jaxtrain"] == "jaxtrain.cli.main:entry"
    required = [r.lower() for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in required if r.startswith(EXTRAS_ONLY)], required
    assert {"tf", "report", "tensorboard", "test"} <= set(meta.get_all("Provides-Extra"))


def test_unpacked_wheel_runs_alone(wheel, tmp_path):
    """Imported from the unpacked wheel (first on the path, from another directory), jaxtrain
    resolves its entry point and reads a shipped config and a built-in table from there."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import jaxtrain, jaxtrain.cli.main as m\n"
            "from jaxtrain.config.schema import load_config\n"
            "from jaxtrain.data.sources import builtin_table\n"
            "assert callable(m.entry)\n"
            "print(jaxtrain.__file__, load_config('digits_mlp').name, builtin_table('digits')['x'].shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where, name, shape = done.stdout.split(maxsplit=2)
    assert where.startswith(str(site)) and name == "digits_mlp" and shape.strip() == "(1797, 64)"


def test_readme_stays_a_users_page_under_20_kb():
    # The benchmark narrative belongs in bench/README.md and data-stage details in docs/data.md.
    size = (ROOT / "README.md").stat().st_size
    assert size <= 20_000, f"README.md is {size} bytes: move details to bench/README.md or docs/"
