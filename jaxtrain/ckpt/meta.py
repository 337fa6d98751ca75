"""What a training checkpoint records besides its arrays: one typed, versioned record.

The checkpoint hook (training/hooks/checkpointing.py) builds a `CheckpointMeta` and saves
`to_json()`; everything that reads a checkpoint back (the resume, early stopping's reload of
its best step) goes through `from_json`, here, and reads fields, not keys. The JSON layout is
the one checkpoints have had since format 2 (a flat object), so checkpoints written before this
record existed resume, and older jaxtrain versions can still read new ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FORMAT = 2  # the version of the record (`format` in the JSON): the full training state and the data position
READABLE = (2,)  # the versions from_json reads


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """A training checkpoint's metadata. `epoch`/`step_in_epoch` are where training continues;
    `step` counts the steps done."""
    format: int | None = FORMAT                # None or another number: not a jaxtrain training checkpoint
    kind: str = ""                             # periodic, epoch, best or final (why it was saved)
    step: int = 0
    epoch: int = 0                             # epoch in progress (0-based)
    step_in_epoch: int = 0                     # steps of it done
    steps_per_epoch: int = 0
    steps_per_call: int | None = None          # K the run used (the same chunk boundaries on resume)
    epoch_sums: dict | None = None             # the part-done epoch's metric sums (host floats)
    devices: int | None = None                 # in the mesh it was saved on
    last_record: dict | None = None            # the last epoch record, for the summary
    hooks: dict = dataclasses.field(default_factory=dict)   # each stateful hook's state_dict, by name
    timeline: dict = dataclasses.field(default_factory=dict)  # the run clock's state (every segment)
    config: dict = dataclasses.field(default_factory=dict)  # the resolved config
    stats: dict | None = None                  # the fitted preprocessing statistics
    hyperparams_in_state: tuple[str, ...] = ()  # a vectorized point's optimizer fields kept in its state
    extra: dict = dataclasses.field(default_factory=dict)   # keys this version does not know, kept

    @property
    def is_training(self) -> bool:
        """Whether jaxtrain's checkpoint hook wrote it in a version this code reads."""
        return self.format in READABLE

    @property
    def batch_size(self) -> int | None:
        return (self.config.get("data") or {}).get("batch_size")

    def hook_state(self, name: str) -> dict:
        """The state the hook called `name` saved ({} when it saved none)."""
        return self.hooks.get(name) or {}

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["hyperparams_in_state"] = list(self.hyperparams_in_state)
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckpointMeta":
        """The record of a saved meta dict (format 2, the layout since before this class); a
        checkpoint of another format comes back with only its `format`, for the refusal to name."""
        data = dict(data)
        if data.get("format") not in READABLE:
            return cls(format=data.get("format"))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        fields = {k: v for k, v in data.items() if k in known and v is not None}
        fields["hyperparams_in_state"] = tuple(fields.get("hyperparams_in_state") or ())
        for name in ("epoch_sums", "last_record", "stats", "steps_per_call", "devices"):
            fields.setdefault(name, None)
        return cls(**fields, extra={k: v for k, v in data.items() if k not in known})
