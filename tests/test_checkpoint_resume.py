"""Checkpoints and exact resume: a resumed run must equal the uninterrupted one bit for bit."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxtrain import resume

from jaxtrain import train
from jaxtrain.ckpt.checkpoint import Checkpointer
from jaxtrain.cli.main import main

# Blobs: 400 rows -> 240 train rows after the val/test splits; batch 16 -> 15 steps per epoch.
BASE = {"name": "blobs", "data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400,
                                  "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"hidden_sizes": [16], "dropout": 0.2},  # dropout: the RNG stream must resume too
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "train": {"epochs": 3, "steps_per_call": 2},
        "checkpoint": {"every_epochs": 1, "every_seconds": None},  # saves by epoch, not by clock
        "logging": {"progress": "none"}}


def _cfg(**sections):
    cfg = json.loads(json.dumps(BASE))
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def _final_state(workdir):
    ckpt = Checkpointer(workdir / "checkpoints")
    state, meta = ckpt.restore_raw()
    ckpt.close()
    return state, meta


def _assert_bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _summary_metrics(workdir):
    s = json.loads((workdir / "summary.json").read_text())
    return {"test": s["test"], "val": s["val"], "loss": s["train"]["loss"],
            "accuracy": s["train"]["accuracy"], "steps": s["train"]["steps"]}


@pytest.mark.parametrize("on_device", [True, False], ids=["on_device", "streaming"])
@pytest.mark.parametrize("devices", [1, None], ids=["1dev", "8dev"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, on_device, devices):
    """45 steps straight == 23 steps (a mid-epoch checkpoint) + resume + the rest."""
    cfg = _cfg(train={"on_device_fraction": 1.0 if on_device else 0.0},
               parallel={"data_axis_size": devices},
               checkpoint={"every_steps": 22, "every_epochs": None, "keep": 10})
    full = tmp_path / "full"
    train(cfg, workdir=full)
    # Step saves land on the first compiled-call boundary at or after each multiple of 22:
    # K=2 and epochs of 15 steps put the boundaries of epoch 2 at 17, 19, 21, 23, ...
    steps = sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [23, 44, 45]
    # The interrupted run: the directory as it was right after the step-23 save.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for s in (44, 45):
        shutil.rmtree(cut / "checkpoints" / str(s))
    (cut / "summary.json").unlink()
    _, meta = Checkpointer(cut / "checkpoints").restore_raw()
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 8) and meta["epoch_sums"]["count"] == 8 * 16

    resume(cut)
    state_full, meta_full = _final_state(full)
    state_cut, meta_cut = _final_state(cut)
    assert meta_full["step"] == meta_cut["step"] == 45
    _assert_bitwise_equal(state_full, state_cut)  # params, optimizer state, RNG streams, step
    assert _summary_metrics(full) == _summary_metrics(cut)


def test_extending_a_finished_run_equals_the_longer_run(tmp_path, capsys):
    """2 epochs, then `--resume --set train.epochs=4`, equals 4 epochs straight (constant lr)."""
    long_run, short = tmp_path / "long", tmp_path / "short"
    train(_cfg(train={"epochs": 4}, parallel={"data_axis_size": 1}), workdir=long_run)
    first = train(_cfg(train={"epochs": 2}, parallel={"data_axis_size": 1}), workdir=short)
    code = main(["train", "--resume", str(short), "--set", "train.epochs=4",
                 "--set", "logging.progress=plain"])
    assert code == 0
    # The summary describes the whole run: both segments' time, every epoch's throughput.
    t = json.loads((short / "summary.json").read_text())["time"]
    assert len(t["segments"]) == 2 and t["total_s"] == pytest.approx(sum(s["total_s"] for s in t["segments"]))
    # the first segment as its last checkpoint saw it: all but the test evaluation and the summary
    assert 0 < t["segments"][0]["total_s"] <= first["time"]["total_s"] < t["total_s"]
    assert t["breakdown"]["train"] == pytest.approx(sum(s["breakdown"]["train"] for s in t["segments"]))
    timeline = _final_state(short)[1]["timeline"]
    assert [(e["epoch"], e["segment"]) for e in timeline["epochs"]] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert "resume: continuing from checkpoint step 30 (epoch 3, step 0 of 15)" in capsys.readouterr().out
    _assert_bitwise_equal(_final_state(long_run)[0], _final_state(short)[0])
    assert _summary_metrics(long_run) == _summary_metrics(short)
    # The resumed run's config (with the new length) replaces the old one.
    from jaxtrain import load_config
    assert load_config(short / "config.yaml").train.epochs == 4
    events = [json.loads(line) for line in (short / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "train"] == [1, 2, 3, 4]
    # Resuming a finished run trains nothing, and leaves its summary.json as it was.
    before = (short / "summary.json").read_bytes()
    assert resume(short)["time"] == json.loads(before)["time"]
    assert (short / "summary.json").read_bytes() == before


def test_checkpoint_contents_and_retention(tmp_path):
    """Periodic (every epoch), best and final saves; the last `keep` kept; everything a resume needs."""
    cfg = _cfg(train={"epochs": 4}, parallel={"data_axis_size": 1},
               checkpoint={"keep": 2, "best_metric": "val.accuracy", "best_mode": "max"})
    summary = train(cfg, workdir=tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    # One store: the latest `keep` steps and the best one; a best is not written a second time.
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    store = Checkpointer(ckpts)
    best = [s for s in steps if store.manager.metrics(s) is not None]
    assert len(best) == 1 and set(steps) == {45, 60, best[0]} and not (ckpts / "best").exists()
    state, meta = _final_state(tmp_path / "run")
    assert set(state) == {"step", "params", "rest", "opt_state"}
    assert int(state["step"]) == 60 and meta["step"] == 60
    assert (meta["epoch"], meta["step_in_epoch"], meta["steps_per_epoch"]) == (4, 0, 15)
    assert meta["config"]["train"]["epochs"] == 4 and meta["config"]["model"]["dropout"] == 0.2
    assert meta["stats"] == json.loads((tmp_path / "run" / "stats.json").read_text())
    # The dropout RNG key is stored as raw key data.
    assert any(np.asarray(leaf).dtype == np.uint32 for leaf in jax.tree.leaves(state["rest"]))
    # The best checkpoint holds the best val accuracy seen in metrics.jsonl.
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [e for e in events if e["event"] == "eval" and e["split"] == "val"]
    top = max(vals, key=lambda e: e["accuracy"])  # the first epoch reaching the maximum
    _, bmeta = store.restore_raw(best[0])
    assert bmeta["step"] == top["step"] == best[0]
    assert bmeta["hooks"]["checkpoint"]["best_value"] == pytest.approx(top["accuracy"])
    assert store.manager.metrics(best[0])["value"] == pytest.approx(top["accuracy"])
    store.close()
    assert summary["test"]


def test_resume_without_a_checkpoint_starts_from_step_zero(tmp_path, capsys):
    cfg = _cfg(train={"epochs": 1}, parallel={"data_axis_size": 1}, checkpoint={"enabled": False})
    first = train(cfg, workdir=tmp_path / "run")
    again = resume(tmp_path / "run", logging__progress="plain")
    assert "no complete checkpoint" in capsys.readouterr().out
    assert again["train"]["steps"] == 15
    assert again["test"] == first["test"]  # from scratch again, with the same seed


def test_resume_refuses_what_it_cannot_do(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a jaxtrain run directory" in capsys.readouterr().err
    train(_cfg(train={"epochs": 1}, parallel={"data_axis_size": 1}), workdir=tmp_path / "run")
    # Another batch size cuts the epoch into other batches: the data position would not mean
    # the same, even where the number of steps per epoch stays (240 rows: 15 steps of 16 or 17).
    for batch in (32, 17):
        assert main(["train", "--resume", str(tmp_path / "run"), "--set", f"data.batch_size={batch}"]) == 2
        assert f"data.batch_size=16 and 15 steps per epoch, this run has data.batch_size={batch}" in capsys.readouterr().err
    # A run whose config no longer fits its checkpoint: eval names the first parameter that differs.
    config = tmp_path / "run" / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("- 16", "- 8"))
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "parameter 'head.kernel': shape (16, " in err and "(8, " in err and "does not match its checkpoint" in err
    config.write_text(original)
    # A step folder cut short (its arrays gone) is named as damaged by resume and by eval.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "15" / "state")
    for command in (["train", "--resume", str(tmp_path / "run")], ["eval", str(tmp_path / "run")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "checkpoints/15' cannot be read" in err and "incomplete or damaged" in err
    # Training into an existing run without --resume is still refused.
    assert main(["train", "--workdir", str(tmp_path / "run")]) == 2


def test_resume_keeps_early_stopping_state_and_augmentation_exact(tmp_path):
    """Hook state (best value, patience) and step-keyed augmentation survive a resume; the best
    parameters, kept on the device by the first process, come back from the best step's checkpoint."""
    cfg = _cfg(train={"epochs": 4, "augment": {"noise": 0.3, "image_shape": [2, 4]},
                      "early_stopping": {"metric": "val.loss", "patience": 10, "min_delta": 100.0}},
               parallel={"data_axis_size": 1}, checkpoint={"keep": 10})
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, workdir=full)
    shutil.copytree(full, cut)
    for s in (45, 60):
        shutil.rmtree(cut / "checkpoints" / str(s))
    resume(cut)
    _assert_bitwise_equal(_final_state(full)[0], _final_state(cut)[0])
    s_full, s_cut = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    assert s_full["early_stopping"] == s_cut["early_stopping"]
    assert s_cut["early_stopping"]["best_epoch"] == 1 and s_cut["early_stopping"]["restored_best"]
    assert _summary_metrics(full) == _summary_metrics(cut)


def test_saves_by_time_follow_the_runs_clock(tmp_path):
    """checkpoint.every_seconds: a save at the first call boundary 25 s after the last one.
    A fake clock moves 10 s per call (a hook of an earlier stage than the checkpoint hook), so the saves
    fall on every third step: 3, 6, 9, 12, and 15 at the epoch's end (30 s after 12)."""
    from jaxtrain import load_config
    from jaxtrain.data import load_dataset
    from jaxtrain.runs.trained import make_model
    from jaxtrain.training.hooks import CheckpointHook
    from jaxtrain.training.loop import fit
    from jaxtrain.engine.plan import make_plan
    from jaxtrain.training.setup import setup
    from jaxtrain.training.context import RunContext
    from jaxtrain.training.hooks.protocol import Hook
    from jaxtrain.util.events import Console, JsonlWriter
    now = [0.0]

    class Tick(Hook):
        stage = "validate"  # acts before the checkpoint hook (persist), whatever the list order

        def after_call(self, info):
            now[0] += 10.0

    cfg = load_config(_cfg(train={"epochs": 1, "steps_per_call": 1}, parallel={"data_axis_size": 1},
                           checkpoint={"every_seconds": 25, "every_epochs": None, "keep": 10}))
    dataset = load_dataset(cfg.data)
    ctx = RunContext(console=Console("none"), events=JsonlWriter(None), workdir=tmp_path,
                     clock=lambda: now[0])
    run = setup(cfg, make_model(cfg, dataset), dataset, ctx, plan=make_plan(cfg, dataset))
    hook = CheckpointHook(cfg, tmp_path / "checkpoints")
    fit(run, [hook, Tick()])
    assert hook.saved_steps == [3, 6, 9, 12, 15]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 6, 9, 12, 15]


def test_saves_that_are_not_a_new_best_do_not_warn(tmp_path, caplog):
    """Only a new best carries metrics, by design: Orbax's warning for the other saves
    ("Requested `tracked_metric`; did not provide metrics") must not reach the user."""
    from jaxtrain.ckpt.checkpoint import Best
    state = {"w": jax.numpy.ones(3)}
    store = Checkpointer(tmp_path / "ckpt", best=Best("val.loss"))
    with caplog.at_level("WARNING"):
        store.save(1, state, {"kind": "best"}, best_value=0.5)
        store.save(2, state, {"kind": "final"})
    store.close()
    assert store.manager.best_step() == 1 and store.latest_step() == 2
    assert not [r for r in caplog.records if "metric" in r.getMessage()], caplog.text
