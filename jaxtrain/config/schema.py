"""Typed, frozen configuration.

A config is a tree of frozen dataclasses. YAML comes in as plain dicts and is
checked against the dataclass type hints: unknown keys are errors that list the
valid ones, values must have the annotated type, and each section may check its
own ranges in `validate()`. Variants override the defaults instead of copying
them; `--set section.key=value` overrides one key, the value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from jaxtrain.config.data import DataConfig
from jaxtrain.config.rules import check_config
from jaxtrain.util.errors import ConfigError, check_key



def _config_dir() -> Path:
    """Where the shipped configs live: the installed `jaxtrain.configs` package, or the
    repository's `configs/` when running from a source tree."""
    source_tree = Path(__file__).resolve().parents[2] / "configs"
    if (source_tree / "digits_mlp.yaml").is_file():
        return source_tree
    import importlib.resources
    return Path(str(importlib.resources.files("jaxtrain.configs")))


CONFIG_DIR = _config_dir()


BUILTIN_MODELS = ("mlp", "linear", "cnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # A built-in model (mlp, linear, cnn) or your own, by import path: "package.module:factory",
    # called as factory(input_shape, out_features, *, rngs, **kwargs) (model/imported.py).
    name: str = "mlp"
    # The imported factory's keyword arguments.
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Where an imported model's module was found; filled in when a run starts, so eval,
    # predict and --resume import the same file from any working directory.
    import_root: str | None = None
    # mlp: the hidden layers; cnn: the dense layers after the convolutions.
    hidden_sizes: tuple[int, ...] = (128, 64)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "silu", "elu"] = "relu"
    dropout: float = 0.0
    # cnn: one 'SAME' convolution (+ batch norm) + activation + 2x2 max pooling per entry.
    channels: tuple[int, ...] = (32, 64)
    kernel_sizes: tuple[int, ...] = (3, 3)
    batch_norm: bool = False
    # cnn: how convolutions are computed. auto: XLA's convolution, except on CPU, where
    # im2col (shifted copies and one matmul) runs the fused epoch much faster; xla or
    # im2col force one. summary.json records the choice (model.conv_impl).
    conv_impl: Literal["auto", "xla", "im2col"] = "auto"
    # Fine-tuning: a run directory or checkpoint whose matching parameters seed this model.
    init_from: str | None = None
    # mlp on a table: how numeric columns enter the network (docs/models.md). none: the
    # normalized value; piecewise_linear: `bins` components from the training split's
    # quantiles (edges saved in stats.json); periodic: sin/cos of `frequencies` trainable
    # frequencies (initial N(0, frequency_scale)), then a per-column linear layer and ReLU.
    numeric_embedding: Literal["none", "piecewise_linear", "periodic"] = "none"
    bins: int = 64
    frequencies: int = 48
    frequency_scale: float = 0.01
    # The width of each numeric column's embedding (periodic; piecewise_linear: a per-column
    # linear layer and ReLU over the bins, or 0 for the bins themselves).
    embedding_dim: int = 16
    # mlp on a table: category columns one-hot, or a learned vector per category of
    # min(16, round(1.6 * n ** 0.56)) dimensions (n: the column's categories), unseen: a reserved one.
    category_embedding: Literal["onehot", "learned"] = "onehot"
    # mlp: k members with their own parameters trained as one model on the mean of their
    # losses; evaluated and served on the mean prediction (probabilities for classes).
    ensemble: int = 1

    @property
    def tabular(self) -> bool:
        """Whether the mlp is built with embeddings or as an ensemble (model/tabular.py)."""
        return (self.numeric_embedding != "none" or self.category_embedding != "onehot"
                or self.ensemble != 1)

    @property
    def imported(self) -> bool:
        return ":" in self.name

    def validate(self, key: str) -> None:
        check_key(self.name in BUILTIN_MODELS or _IMPORT_PATH.fullmatch(self.name) is not None,
                  f"{key}.name", f"'{self.name}' is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
                  "nor an import path 'package.module:factory'")
        check_key(self.imported or not self.kwargs, f"{key}.kwargs",
                  "applies to a model given by import path (model.name: 'package.module:factory')")
        check_key(all(h > 0 for h in self.hidden_sizes), f"{key}.hidden_sizes",
               f"every layer needs a positive width, got {list(self.hidden_sizes)}")
        check_key(0.0 <= self.dropout < 1.0, f"{key}.dropout", f"must be in [0, 1), got {self.dropout}")
        check_key(len(self.channels) >= 1 and all(c > 0 for c in self.channels), f"{key}.channels",
                  f"needs one or more positive channel counts, got {list(self.channels)}")
        check_key(len(self.kernel_sizes) == len(self.channels) and all(k > 0 for k in self.kernel_sizes),
                  f"{key}.kernel_sizes", f"needs one positive size per entry of model.channels "
                  f"({len(self.channels)}), got {list(self.kernel_sizes)}")
        self._validate_tabular(key)

    def _validate_tabular(self, key: str) -> None:
        check_key(self.bins >= 1, f"{key}.bins", f"needs at least one bin, got {self.bins}")
        check_key(self.frequencies >= 1, f"{key}.frequencies", f"needs at least one, got {self.frequencies}")
        check_key(self.frequency_scale > 0, f"{key}.frequency_scale", f"must be positive, got {self.frequency_scale}")
        check_key(self.embedding_dim >= (1 if self.numeric_embedding == "periodic" else 0),
                  f"{key}.embedding_dim", f"must be positive (0 only with piecewise_linear), got {self.embedding_dim}")
        check_key(self.ensemble >= 1, f"{key}.ensemble", f"needs at least one member, got {self.ensemble}")
        check_key(self.name == "mlp" or not self.tabular, f"{key}.name",
                  "numeric_embedding, category_embedding and ensemble apply to model.name=mlp, "
                  f"not {self.name}")


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "warmup_cosine", "step"] = "constant"
    warmup_epochs: float = 0.0
    # Step decay: multiply the learning rate by `decay_factor` every `decay_epochs`.
    decay_epochs: float = 1.0
    decay_factor: float = 0.1
    clip_norm: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    # Parameter path patterns (fnmatch, e.g. "layers.0.*") kept fixed during training.
    freeze: tuple[str, ...] = ()

    def validate(self, key: str) -> None:
        check_key(self.learning_rate > 0 and math.isfinite(self.learning_rate), f"{key}.learning_rate",
               f"must be a positive number, got {self.learning_rate}")
        check_key(0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0, f"{key}.b1/b2", "must be in [0, 1)")
        check_key(self.eps > 0, f"{key}.eps", "must be positive")
        check_key(self.decay_factor > 0, f"{key}.decay_factor", "must be positive")
        check_key(0.0 <= self.momentum < 1.0, f"{key}.momentum", f"must be in [0, 1), got {self.momentum}")
        check_key(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        check_key(self.l1 >= 0 and self.l2 >= 0, f"{key}.l1/l2", "penalties must be >= 0")
        check_key(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        check_key(self.decay_epochs > 0, f"{key}.decay_epochs", "must be positive")
        check_key(self.clip_norm is None or self.clip_norm > 0, f"{key}.clip_norm", "must be positive")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    metric: str = "val.loss"
    patience: int = 5
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"

    def validate(self, key: str) -> None:
        check_key(self.patience >= 1, f"{key}.patience", "must be >= 1")
        check_key(self.min_delta >= 0, f"{key}.min_delta", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation inside the train step (augment.py); 0 turns each kind off."""
    shift: int = 0                # largest random shift, in pixels, on each axis
    rotate: float = 0.0           # largest random rotation, in degrees
    noise: float = 0.0            # std of Gaussian noise added to the normalized inputs
    # (height, width[, channels]) of the images, for flat features whose data records none.
    image_shape: tuple[int, ...] | None = None

    def validate(self, key: str) -> None:
        check_key(self.shift >= 0, f"{key}.shift", f"must be >= 0 pixels, got {self.shift}")
        check_key(0 <= self.rotate <= 180, f"{key}.rotate", f"must be in [0, 180] degrees, got {self.rotate}")
        check_key(self.noise >= 0, f"{key}.noise", f"must be >= 0, got {self.noise}")

    def __bool__(self) -> bool:  # `if cfg.train.augment:` asks whether any augmentation is on
        return bool(self.shift or self.rotate or self.noise)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    # Steps fused into one compiled call (lax.scan); "auto" measures a few candidates.
    steps_per_call: int | Literal["auto", "epoch"] = "auto"
    precision: Literal["float32", "bfloat16"] = "float32"
    # Upload the training set to the devices when it takes at most this fraction of their memory.
    on_device_fraction: float = 0.25
    eval_every_epochs: int = 1
    on_nonfinite: Literal["stop", "skip_step"] = "stop"
    early_stopping: EarlyStoppingConfig | None = None
    augment: AugmentConfig = AugmentConfig()
    profile: bool = False
    # train.profile: how many compiled calls the jax.profiler trace records.
    profile_trace_calls: int = 5
    profile_steps: int = 0    # > 0: stop training after this many steps (`jaxtrain profile --steps`)
    # JAX's persistent compilation cache: "auto" (the user cache dir, ~/.cache/jaxtrain/xla),
    # a directory, or null to leave it off.
    compilation_cache: str | None = "auto"
    # Microbatches per batch: the step adds up their gradients and applies one update, so a
    # batch's activations need only 1/N of the memory (data.batch_size stays the global batch).
    grad_accum_steps: int = 1
    # A moving average of the parameters, ema = d * ema + (1 - d) * params after every step;
    # evaluation, eval, predict and the best checkpoint use it. null: none is kept.
    ema_decay: float | None = None

    def validate(self, key: str) -> None:
        check_key(self.grad_accum_steps >= 1, f"{key}.grad_accum_steps",
                  f"must be >= 1 (1: no accumulation), got {self.grad_accum_steps}")
        check_key(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, f"{key}.ema_decay",
                  f"must be in [0, 1) (e.g. 0.999), or null for none, got {self.ema_decay}")
        check_key(self.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {self.epochs}")
        check_key(self.seed >= 0, f"{key}.seed", f"must be >= 0, got {self.seed}")
        check_key(not isinstance(self.steps_per_call, int) or self.steps_per_call >= 1,
               f"{key}.steps_per_call", "must be >= 1, 'auto' or 'epoch'")
        check_key(0 <= self.on_device_fraction <= 1, f"{key}.on_device_fraction", "must be in [0, 1]")
        check_key(self.eval_every_epochs >= 1, f"{key}.eval_every_epochs", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-process runs (see distributed.py); unset values come from the environment."""
    # auto: join when the settings below, `jaxtrain launch` or a cluster (SLURM, TPU pod) say so.
    enabled: bool | Literal["auto"] = "auto"
    coordinator: str | None = None   # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout_s: int = 60
    # A process silent this long counts as dead, and the others stop with an error.
    heartbeat_timeout_s: int = 30
    # A live process that makes no progress this long (stuck in a collective that not all
    # processes joined) ends the run with one line naming it and the phase; null: no limit.
    collective_timeout_s: int | None = 600

    def validate(self, key: str) -> None:
        check_key(self.initialization_timeout_s >= 1, f"{key}.initialization_timeout_s", "must be >= 1")
        check_key(self.heartbeat_timeout_s >= 1, f"{key}.heartbeat_timeout_s", "must be >= 1")
        check_key(self.collective_timeout_s is None or self.collective_timeout_s >= 1,
                  f"{key}.collective_timeout_s", "must be >= 1 (seconds), or null for no limit")
        check_key(self.num_processes is None or self.num_processes >= 1, f"{key}.num_processes", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    strategy: Literal["sharded", "pmap", "fsdp"] = "sharded"
    # Number of devices on the data axis; null uses every device.
    data_axis_size: int | None = None
    # Mesh axes and sizes, e.g. {data: 2, fsdp: 4}; -1 takes the remaining devices. Axes:
    # data, and fsdp (the axis `fsdp` shards parameters over; the batch is split over both).
    mesh: dict[str, int] = dataclasses.field(default_factory=dict)
    distributed: DistributedConfig = DistributedConfig()

    def validate(self, key: str) -> None:
        bad = sorted(set(self.mesh) - {"data", "fsdp"})
        check_key(not bad, f"{key}.mesh", f"unknown axis {bad[0] if bad else ''}; valid axes: data, fsdp")
        check_key(all(v == -1 or v >= 1 for v in self.mesh.values()), f"{key}.mesh",
               "sizes must be >= 1, or -1 for the remaining devices")
        check_key(self.data_axis_size is None or self.data_axis_size >= 1, f"{key}.data_axis_size", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    enabled: bool = True
    # When to save; each is off when null, and a save happens when any is due (plus the last).
    # By time by default: a kill loses at most a minute of training, and a short run saves once.
    every_seconds: float | None = 60.0
    every_epochs: int | None = None
    every_steps: int | None = None
    keep: int = 3
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    # Synchronous by default: a kill then never costs more than one interval of work (an
    # async save in flight would be lost too). For small models the two cost the same;
    # turn it on for large ones, whose writes take long enough to overlap with training.
    async_save: bool = False

    def validate(self, key: str) -> None:
        check_key(self.every_seconds is None or self.every_seconds > 0, f"{key}.every_seconds",
                  "must be > 0 (or null: no saves by time)")
        check_key(self.every_epochs is None or self.every_epochs >= 1, f"{key}.every_epochs", "must be >= 1")
        check_key(self.every_steps is None or self.every_steps >= 1, f"{key}.every_steps", "must be >= 1")
        check_key(self.keep >= 1, f"{key}.keep", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    tensorboard: bool = False
    # Experiment trackers (extras jaxtrain[mlflow], jaxtrain[wandb]): params, epoch metrics, the
    # summary and the report's plots. MLflow honours MLFLOW_TRACKING_URI, W&B its WANDB_* settings.
    mlflow: bool = False
    wandb: bool = False
    log_every_steps: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "config"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()

    def validate(self, key: str) -> None:
        check_config(self)


# ---------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)[:1]
            return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            _, vt = typing.get_args(tp)
            return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, key)
        if dataclasses.is_dataclass(value):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot, no sign) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking keys, types and ranges."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields, key=str)  # keys may be numbers in a user's YAML
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'? " if close else ""
        raise ConfigError(f"unknown config key '{where}'; {hint}"
                          f"valid keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
    values = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    return obj


def to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-ready data for a config tree."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=v' -> (['a', 'b'], yaml-parsed v)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    path, _, text = item.partition("=")
    keys = [k for k in path.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override '{item}' has an empty key; write section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e.problem})") from None
    return keys, value


def apply_overrides(raw: dict, overrides: dict[str, Any] | list[str] | None) -> dict:
    """Apply `--set`-style strings or a {'a.b': value} dict to raw config data."""
    if not overrides:
        return raw
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(s) for s in overrides)
    for keys, value in items:
        keys = keys.split(".") if isinstance(keys, str) else keys
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        raw = _merge(raw, nested)
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        named = CONFIG_DIR / p.name
        if not p.suffix and (CONFIG_DIR / f"{p.name}.yaml").is_file():
            p = CONFIG_DIR / f"{p.name}.yaml"
        elif named.is_file() and str(p) == p.name:
            p = named
        else:
            raise ConfigError(f"config file '{path}' not found; pass a YAML file path or one of: "
                              f"{', '.join(sorted(q.stem for q in CONFIG_DIR.glob('*.yaml')))}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}'{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{p}' cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", p.stem)
    return raw


def load_config(source: str | Path | dict | Config | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load a config from a YAML path, a dict, a Config or the default (digits MLP)."""
    if isinstance(source, Config):
        raw = to_dict(source)
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        raw = read_yaml(source if source is not None else CONFIG_DIR / "digits_mlp.yaml")
    raw = apply_overrides(raw, overrides)
    return from_dict(Config, raw)


# The model keys each built-in model reads (an imported one reads `kwargs`); beside the keys
# every model has, a run's config.yaml keeps only these, so it shows what shaped the model.
MODEL_KEYS = {"mlp": ("hidden_sizes", "activation", "dropout"), "linear": (),
              "cnn": ("hidden_sizes", "activation", "dropout", "channels", "kernel_sizes", "batch_norm")}
COMMON_MODEL_KEYS = ("name", "import_root", "init_from")


def tabular_model_keys(m: ModelConfig) -> tuple[str, ...]:
    """The tabular mlp's keys that shape a run's model (none for the plain mlp)."""
    if not m.tabular:
        return ()
    numeric = {"none": (), "piecewise_linear": ("bins", "embedding_dim"),
               "periodic": ("frequencies", "frequency_scale", "embedding_dim")}[m.numeric_embedding]
    return ("numeric_embedding", *numeric, "category_embedding", "ensemble")


def dump_yaml(cfg: Config) -> str:
    """The config as YAML, less the model keys its model does not read (they load back as defaults)."""
    raw = to_dict(cfg)
    used = COMMON_MODEL_KEYS + (("kwargs",) if cfg.model.imported else MODEL_KEYS[cfg.model.name]) \
        + tabular_model_keys(cfg.model)
    raw["model"] = {k: v for k, v in raw["model"].items() if k in used}
    return yaml.safe_dump(raw, sort_keys=False)
