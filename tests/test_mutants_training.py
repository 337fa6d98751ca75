"""Direct checks of jaxtrain/training that a whole training run leaves unchecked (issue 29's
mutation testing): a hook's restore into a vectorized lane's slice, the run's time across
resumed segments, the checkpoint hook's saved best and JSON-ready metadata, the profile's
inputs and verdicts, and the trackers' queue."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxtrain import load_config
from jaxtrain.config.schema import Config
from jaxtrain.training.accounting import time_section
from jaxtrain.training.hooks.best import BestMetric
from jaxtrain.training.hooks.checkpointing import CheckpointHook
from jaxtrain.training.hooks.profiling import SHARES, judge
from jaxtrain.training.hooks.protocol import Request
from jaxtrain.training.hooks.trackers import TrackerHook, tracker_hooks
from jaxtrain.training.loop import _profile
from jaxtrain.training.run import Lane, Run
from jaxtrain.util.clock import RunClock
from jaxtrain.util.errors import UserError
from jaxtrain.util.phases import Phase


class _State(struct.PyTreeNode):
    params: dict
    rest: dict


def test_a_restore_into_a_vectorized_lane_replaces_only_its_slice_of_the_named_field():
    stacked = _State(params={"w": jnp.zeros((3, 2), jnp.float32)}, rest={"n": jnp.arange(3)})
    run = types.SimpleNamespace(state=stacked, stop_reason=None)
    lane = Lane(cfg=None, ctx=None, index=1)
    Run.apply(run, lane, Request(stop="first", restore={"params": {"w": np.array([4.0, 5.0], np.float32)}},
                                 summary={"early_stopping": {"epoch": 2}}))
    Run.apply(run, lane, Request(stop="second"))
    expected = np.zeros((3, 2), np.float32)
    expected[1] = [4.0, 5.0]
    np.testing.assert_array_equal(np.asarray(run.state.params["w"]), expected)
    np.testing.assert_array_equal(np.asarray(run.state.rest["n"]), np.arange(3))  # not asked for: kept
    assert run.stop_reason == "first" and lane.extra == {"early_stopping": {"epoch": 2}}


def test_a_run_resumed_from_an_older_segment_adds_up_every_part_even_one_a_segment_lacks():
    now = [100.0]
    clock = RunClock(now=lambda: now[0])
    earlier = {"dispatch": 2.0, "device_compute": 1.0, "legacy_phase": 3.0}  # a part this segment lacks
    clock.load_state_dict({"segments": [{"total_s": 6.0, "phases": earlier}], "epochs": []})
    with clock.phase(Phase.EVALUATION):
        now[0] += 1.25
    now[0] += 0.5                                                            # charged to `other`
    t = time_section(clock)
    assert t["total_s"] == pytest.approx(6.0 + 1.75)
    assert t["breakdown"]["train"] == pytest.approx(3.0)
    assert t["breakdown"]["legacy_phase"] == pytest.approx(3.0)
    assert t["breakdown"]["evaluation"] == pytest.approx(1.25)
    assert t["breakdown"]["other"] == pytest.approx(0.5)
    assert sum(t["breakdown"].values()) == pytest.approx(t["total_s"])


def test_the_checkpoint_hook_saves_and_restores_its_best_by_metric(tmp_path):
    fresh = CheckpointHook(Config(), tmp_path, best=BestMetric("val.loss"))
    assert fresh.state_dict() == {"best_metric": "val.loss", "best_value": None, "best_step": None,
                                  "best_epoch": None}
    saved = {"best_metric": "val.loss", "best_value": 0.25, "best_step": 40, "best_epoch": 4}
    resumed = CheckpointHook(Config(), tmp_path, best=BestMetric("val.loss"))
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    other = CheckpointHook(Config(), tmp_path, best=BestMetric("val.accuracy", "max"))
    other.load_state_dict(saved)                                 # another metric's best: not taken
    assert other.state_dict()["best_step"] is None


def test_checkpoint_metadata_holds_numpy_and_jax_scalars_as_plain_numbers(tmp_path):
    stats = {"mean": np.float32(0.5), "count": np.int64(3), "scale": jnp.float32(2.0), "names": ["a"]}
    hook = CheckpointHook(Config(), tmp_path, stats=stats)
    assert hook.stats == {"mean": 0.5, "count": 3.0, "scale": 2.0, "names": ["a"]}
    assert all(type(v) is float for k, v in hook.stats.items() if k != "names")


def test_the_profile_reports_measured_call_lengths_in_milliseconds():
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(train=types.SimpleNamespace(precision="float32")),
                                mesh=types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="cpu")])),
                                engine=types.SimpleNamespace(k_timings={1: 0.004, 8: 0.0125}))
    profile = _profile(run, perf="perf")
    assert profile["steps_per_call_measured_ms"] == pytest.approx({"1": 4.0, "8": 12.5})
    assert (profile["perf"], profile["precision"], profile["platform"]) == ("perf", "float32", "cpu")


def _config_keys(text: str) -> list[str]:
    return re.findall(r"\b([A-Za-z_]+\.[A-Za-z_]+)\b", text)


def test_each_verdict_has_its_own_advice_naming_real_config_keys():
    advice = {}
    for verdict, phases in SHARES.items():
        # one row takes 90%; the device idles 10% when that row is compute, else 90%. No dispatch row
        # in the compute case: an absent row is no time.
        got, advice[verdict] = judge({phases[0]: 0.9}, 0.1 if verdict == "compute-bound" else 0.9, k=4)
        assert got == verdict
    assert len(set(advice.values())) == len(SHARES)
    cfg = Config()
    for verdict, text in advice.items():
        keys = _config_keys(text)
        assert keys or verdict == "compute-bound", (verdict, text)
        for key in keys:
            section, name = key.split(".")
            assert hasattr(getattr(cfg, section, None), name), (verdict, key)


def test_the_idle_and_dispatch_limits_are_30_and_25_percent():
    assert judge({"device_compute": 0.7, "input_wait": 0.3}, idle=0.3, k=1)[0] == "input-bound"
    assert judge({"device_compute": 0.7, "input_wait": 0.3}, idle=0.29, k=1)[0] == "compute-bound"
    assert judge({"device_compute": 0.75, "dispatch": 0.25}, idle=0.2, k=1)[0] == "dispatch-bound"
    assert judge({"device_compute": 0.76, "dispatch": 0.24}, idle=0.2, k=1)[0] == "compute-bound"


def test_a_missing_wandb_is_one_message_naming_the_key_and_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config({"logging": {"wandb": True}})
    with pytest.raises(UserError) as e:
        tracker_hooks(cfg, tmp_path)
    assert str(e.value) == ("config key 'logging.wandb' (or set it to false) needs wandb, which is not "
                            "installed: pip install 'jaxtrain[wandb]'")


@pytest.mark.parametrize("module", ["mlflow", "sqlalchemy", "alembic"])
def test_a_missing_mlflow_part_is_one_message_naming_the_key_and_the_extra(monkeypatch, tmp_path, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError) as e:
        tracker_hooks(load_config({"logging": {"mlflow": True}}), tmp_path)
    assert str(e.value) == (f"config key 'logging.mlflow' (or set it to false) needs {module}, which is not "
                            "installed: pip install 'jaxtrain[mlflow]'")


@pytest.mark.parametrize("mlflow, wandb", [(False, False), (True, False), (False, True), (True, True)])
def test_each_tracker_asked_for_gets_one_hook(tmp_path, mlflow, wandb):
    hooks = tracker_hooks(load_config({"logging": {"mlflow": mlflow, "wandb": wandb}}), tmp_path)
    assert len(hooks) == mlflow + wandb and all(isinstance(hook, TrackerHook) for hook in hooks)


@dataclasses.dataclass
class _Recorder:
    name: str = "recorder"
    calls: list = dataclasses.field(default_factory=list)

    def start(self, params):
        self.calls.append(("start", params))

    def where(self):
        return "recorder: run 1"

    def summary(self, values):
        self.calls.append(("summary", values))

    def files(self, paths):
        self.calls.append(("files", paths))

    def close(self, ok):
        self.calls.append(("close", ok))


def test_the_tracker_hook_hands_its_writer_the_summary_numbers_and_files_in_order(tmp_path):
    writer, lines = _Recorder(), []
    hook = TrackerHook(lambda: writer, {"train.epochs": 2})
    console = types.SimpleNamespace(line=lines.append)
    hook.on_train_start(types.SimpleNamespace(ctx=types.SimpleNamespace(console=console)))
    hook.finish({"val": {"loss": 0.5}, "epochs": 2, "ok": True, "name": "x"}, [tmp_path / "s.json"])
    assert lines == ["recorder: run 1"]
    assert writer.calls == [("start", {"train.epochs": 2}), ("summary", {"val/loss": 0.5, "epochs": 2.0}),
                            ("files", [Path(tmp_path / "s.json")]), ("close", True)]


def test_one_timed_step_still_has_a_step_time():
    from jaxtrain.training.accounting import throughput
    assert throughput([{"train_s": 0.5, "steps": 1, "examples": 32}]) == pytest.approx(
        {"step_time_ms": 500.0, "examples_per_sec": 64.0})


def test_a_streamed_runs_lines_say_so_give_an_eta_before_the_last_epoch_and_its_summary_the_last_loss(tmp_path):
    import io

    from conftest import make_dataset
    from flax import nnx

    from jaxtrain.engine.plan import make_plan
    from jaxtrain.model.models import MLP
    from jaxtrain.training.context import RunContext
    from jaxtrain.training.loop import fit
    from jaxtrain.training.setup import setup
    from jaxtrain.util.events import Console, JsonlWriter
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    ds = make_dataset(x, (x[:, 0] > 0).astype(np.int32), "classification", 2)
    cfg = load_config({"data": {"batch_size": 20}, "parallel": {"data_axis_size": 1},
                       "train": {"epochs": 3, "steps_per_call": 1, "on_device_fraction": 0.0}})
    ticks = iter(range(10**6))
    out = io.StringIO()
    ctx = RunContext(console=Console("plain", stream=out), events=JsonlWriter(None), workdir=tmp_path,
                     clock=lambda: 0.01 * next(ticks))              # every read of the clock: 10 ms later
    run = setup(cfg, MLP(3, (4,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    summary = fit(run, hooks=[])
    lines = out.getvalue().splitlines()
    assert any(line.startswith("data: ") and "(streamed)" in line for line in lines), lines
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [(" | ETA " in line) for line in epoch_lines] == [True, True, False], epoch_lines
    assert summary["train"]["loss"] == run.lanes[0].history[-1].loss
