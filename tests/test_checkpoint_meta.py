"""CheckpointMeta: the typed record of a checkpoint's meta, read from the dict checkpoints hold."""

import pytest

from jaxtrain.ckpt.meta import FORMAT, CheckpointMeta
from jaxtrain.ckpt.restore import ResumePoint, check_resumable
from jaxtrain.util.errors import UserError

# A meta dict as the checkpoint hook wrote it before CheckpointMeta existed (format 2, flat keys).
OLD = {"format": 2, "kind": "epoch", "step": 30, "epoch": 2, "step_in_epoch": 0, "steps_per_epoch": 15,
       "steps_per_call": 5, "epoch_sums": None, "devices": 1,
       "last_record": {"epoch": 2, "step": 30, "loss": 0.4, "val": {"loss": 0.38}},
       "hooks": {"checkpoint": {"best_metric": "val.loss", "best_value": 0.38, "best_step": 30, "best_epoch": 2},
                 "early_stopping": {"metric": "val.loss", "best": 0.38, "best_epoch": 2, "best_step": 30, "wait": 0},
                 "nonfinite_guard": {"skipped": 0}},
       "timeline": {"segments": []}, "config": {"data": {"batch_size": 16}, "train": {"epochs": 2}},
       "stats": {"task": "classification"}, "hyperparams_in_state": ["learning_rate"]}


def test_an_old_meta_dict_reads_into_fields_and_writes_back_unchanged():
    meta = CheckpointMeta.from_json(OLD)
    assert meta.is_training and meta.format == FORMAT
    assert (meta.step, meta.epoch, meta.step_in_epoch, meta.steps_per_epoch, meta.steps_per_call) == (30, 2, 0, 15, 5)
    assert meta.batch_size == 16 and meta.hyperparams_in_state == ("learning_rate",)
    assert meta.hook_state("early_stopping")["wait"] == 0 and meta.hook_state("absent") == {}
    assert meta.last_record == OLD["last_record"] and meta.stats == OLD["stats"]
    assert meta.to_json() == OLD  # the layout on disk is the old one: older readers still read it


def test_missing_optional_keys_and_unknown_keys():
    bare = {k: OLD[k] for k in ("format", "step", "epoch", "step_in_epoch", "steps_per_epoch", "config")}
    meta = CheckpointMeta.from_json({**bare, "written_by": "a later version"})
    assert meta.hooks == {} and meta.epoch_sums is None and meta.hyperparams_in_state == ()
    assert meta.to_json()["written_by"] == "a later version"  # kept, not dropped


def test_a_checkpoint_of_another_format_is_refused_by_name(tmp_path):
    meta = CheckpointMeta.from_json({"format": 1, "step": 3})
    assert not meta.is_training
    with pytest.raises(UserError, match="format 1, expected 2"):
        check_resumable(ResumePoint(tmp_path, 3, meta), batch_size=16, steps_per_epoch=15)
    with pytest.raises(UserError, match="data.batch_size=16 and 15 steps per epoch"):
        check_resumable(ResumePoint(tmp_path, 30, CheckpointMeta.from_json(OLD)), batch_size=32, steps_per_epoch=8)
