"""Search spaces: `--space KEY=SPEC` parsed into distributions a sampler draws from.

SPEC is one of `loguniform(a,b)`, `uniform(a,b)`, `int(a,b)` or `choice(v1,v2,...)`; KEY is
any config key. Choice values are YAML, like `--set` values (`choice(sgd,adam)`,
`choice([64],[128,64])`). A sampler sees lists as their text; `config_value` turns that
text back into the value.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from jaxtrain.config.schema import Config, load_config
from jaxtrain.util.errors import Arg, ConfigError
from jaxtrain.util.values import split_values

KINDS = ("loguniform", "uniform", "int", "choice")
FORMS = "loguniform(a,b), uniform(a,b), int(a,b) or choice(v1,v2,...)"


@dataclasses.dataclass(frozen=True)
class Dimension:
    kind: str                 # one of KINDS
    low: float = 0.0          # loguniform, uniform, int
    high: float = 0.0
    choices: tuple = ()       # choice: scalars, or the YAML text of lists and mappings

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({','.join(str(c) for c in self.choices)})"
        return f"{self.kind}({self.low:g},{self.high:g})"


def parse_space(items: list[str] | dict[str, str]) -> dict[str, Dimension]:
    """['optimizer.learning_rate=loguniform(1e-4,1e-1)'] (or {key: spec}) -> {key: Dimension}."""
    pairs = list(items.items()) if isinstance(items, dict) else [_split(item) for item in items]
    space: dict[str, Dimension] = {}
    for key, spec in pairs:
        if key in space:
            raise ConfigError(Arg("space"), f" key '{key}' given twice; give it one SPEC")
        space[key] = parse_spec(key, str(spec))
    if not space:
        raise ConfigError("a search needs at least one ", Arg("space", "section.key=SPEC"), f", SPEC one of {FORMS}")
    return space


def _split(item: str) -> tuple[str, str]:
    key, _, spec = item.partition("=")
    if not key.strip() or not spec.strip():
        raise ConfigError(Arg("space", f"'{item}'"), f" must look like section.key=SPEC, SPEC one of {FORMS}")
    return key.strip(), spec.strip()


def parse_spec(key: str, spec: str) -> Dimension:
    """'loguniform(1e-4, 0.1)' -> Dimension('loguniform', 1e-4, 0.1); a ConfigError naming the forms."""
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec, re.S)
    where = Arg("space", f"{key}={spec}")
    if not match or match.group(1) not in KINDS:
        raise ConfigError(f"{where}: SPEC must be {FORMS}")
    kind, body = match.group(1), match.group(2)
    if kind == "choice":
        values = split_values(body)
        if not values:
            raise ConfigError(f"{where}: choice needs at least one value")
        return Dimension("choice", choices=tuple(_choice(where, v) for v in values))
    low, high = _bounds(where, kind, body)
    return Dimension(kind, low, high)


def _bounds(where: str, kind: str, body: str) -> tuple[float, float]:
    parts = [p.strip() for p in body.split(",")]
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None:
        raise ConfigError(f"{where}: {kind} takes two numbers, {kind}(a,b)")
    if not low < high:
        raise ConfigError(f"{where}: the lower bound must be below the upper one")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs bounds above 0")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: int takes two whole numbers")
    return low, high


def _choice(where: str, text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: choice value '{text}' is not valid YAML") from None
    return value if value is None or isinstance(value, (bool, int, float, str)) else text


def config_value(dim: Dimension, value: Any) -> Any:
    """The config value for a sampled one (a list choice's text parsed back)."""
    if dim.kind == "choice" and isinstance(value, str) and value in dim.choices and value[:1] in "[{":
        return yaml.safe_load(value)
    return value


def sample(trial: Any, space: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's values, drawn through Optuna's suggest API (the parameter is the config key)."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.kind == "choice":
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif dim.kind == "int":
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high))
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.kind == "loguniform")
    return values


def trial_config(base: Config, space: dict[str, Dimension], values: dict[str, Any]) -> Config:
    """`base` with the trial's values in place (their types checked like `--set` values)."""
    return load_config(base, {key: config_value(space[key], v) for key, v in values.items()})


def check_space(base: Config, space: dict[str, Dimension]) -> None:
    """Refuse an unknown key or a value the config rejects before any training: every bound and
    every choice is tried."""
    for key, dim in space.items():
        values = dim.choices if dim.kind == "choice" else (dim.low, dim.high)
        for v in values:
            v = int(v) if dim.kind == "int" else v
            try:
                load_config(base, {key: config_value(dim, v)})
            except ConfigError as e:
                raise ConfigError(Arg("space", f"{key}={dim.describe()}"), ": ", *e.parts) from None
