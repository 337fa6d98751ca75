"""The wheel must carry every subpackage and the shipped configs."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxtrain").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "jaxtrain.configs" in listed


def test_shipped_configs_are_package_data():
    from jaxtrain.config.schema import CONFIG_DIR
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {"digits_mlp", "house_prices_linear", "mnist_mlp"} <= names
    assert names == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
