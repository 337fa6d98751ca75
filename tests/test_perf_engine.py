"""Fused execution: K steps per call must not change the training results."""

import jax
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain.engine import autotune

from jaxtrain import load_config
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP


def _problem(n=250, d=6, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).astype(np.int32)
    return make_dataset(x, y, "classification", 2, test_fraction=0.2)


def _train(ctx, ds, k, fraction=1.0, epochs=2):
    cfg = load_config({"model": {"hidden_sizes": [16]}, "data": {"batch_size": 16},
                       "optimizer": {"name": "adam", "learning_rate": 0.01},
                       "train": {"epochs": epochs, "steps_per_call": k, "on_device_fraction": fraction},
                       "parallel": {"data_axis_size": 1}})
    run = setup(cfg, MLP(6, (16,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    summary = fit(run)
    return run, summary, jax.tree.map(np.asarray, run.state.params)


def _assert_bitwise(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, v), a, b)


@pytest.mark.parametrize("fraction", [1.0, 0.0], ids=["on_device", "streaming"])
def test_k1_k7_and_whole_epoch_are_bitwise_identical(ctx, fraction):
    ds = _problem()  # 200 train examples, batch 16: 13 steps, the last one masked
    runs = {k: _train(ctx, ds, k, fraction) for k in (1, 7, "epoch")}
    assert runs[7][0].engine.k == 7 and runs["epoch"][0].engine.k == 13
    _assert_bitwise(runs[1][2], runs[7][2])
    _assert_bitwise(runs[1][2], runs["epoch"][2])
    # the epoch metrics are sums of the same per-step values (added in a different grouping)
    for k in (7, "epoch"):
        assert runs[k][1]["train"]["loss"] == pytest.approx(runs[1][1]["train"]["loss"], rel=1e-6)


def test_auto_reports_its_choice_and_measuring_does_not_change_results(ctx):
    ds = _problem()
    run, summary, params = _train(ctx, ds, "auto")
    k = run.engine.k
    assert k in autotune.candidates(run.engine.steps)
    assert summary["execution"]["steps_per_call"] == k
    measured = summary["execution"]["steps_per_call_measured_ms"]
    assert str(k) in measured and all(v > 0 for v in measured.values())
    # the throwaway measurement calls ran on a copy: same parameters as a plain K=1 run
    _assert_bitwise(params, _train(ctx, ds, 1)[2])


def test_candidates_prefer_divisors_of_the_epoch():
    assert autotune.candidates(600) == [1, 8, 30, 600]
    assert autotune.candidates(13) == [1, 13]                # 13 itself is the divisor near 8
    assert autotune.candidates(469) == [1, 7, 32, 469]     # 469 = 7 x 67
    assert autotune.candidates(600, max_k=20) == [1, 8, 20]
    assert autotune.candidates(1) == [1]


def test_choose_takes_a_larger_k_only_when_clearly_faster():
    per_step = {1: 1.0, 8: 0.5, 30: 0.49, 600: 0.1}  # 30 is not 3% better than 8: stop there
    tried = []

    def measure(k):
        tried.append(k)
        return per_step[k]

    k, timings = autotune.choose(measure, [1, 8, 30, 600])
    assert k == 8 and tried == [1, 8, 30] and timings == {1: 1.0, 8: 0.5, 30: 0.49}
    assert autotune.choose(lambda k: 1.0 / k, [1, 8, 30, 600])[0] == 600
    # multi-process: every candidate is measured (same calls everywhere), the rule is unchanged
    tried.clear()
    assert autotune.choose(measure, [1, 8, 30, 600], early_stop=False)[0] == 8
    assert tried == [1, 8, 30, 600]


def test_long_epochs_are_not_measured_whole():
    assert autotune.candidates(2000) == [1, 8, 25, 500]       # divisors of 2000
    assert max(autotune.candidates(1024)) == 1024


def test_divisor_at_most_is_the_largest_divisor_not_above_k():
    for multiple in (1, 4, 7, 12, 22, 100):
        for k in (1, 2, 3, 5, 8, 13, 47, 200):
            expected = max(d for d in range(1, k + 1) if multiple % d == 0)
            assert autotune.divisor_at_most(multiple, k) == expected
    assert autotune.candidates(600, step_multiple=7) == [1, 7]   # 8, 30 and 600 -> 7
    assert autotune.candidates(600, step_multiple=100) == [1, 5, 25, 100]


@pytest.mark.parametrize("steps_per_call", ["auto", 10, "epoch"])
def test_k_divides_the_checkpoint_interval(ctx, steps_per_call):
    """Step-based checkpoints save between calls, so every K the engine runs divides
    checkpoint.every_steps, including each K that `auto` measures."""
    cfg = load_config({"model": {"hidden_sizes": [16]}, "data": {"batch_size": 16},
                       "train": {"steps_per_call": steps_per_call, "on_device_fraction": 1.0},
                       "checkpoint": {"enabled": True, "every_steps": 6}, "parallel": {"data_axis_size": 1}})
    ds = _problem()
    run = setup(cfg, MLP(6, (16,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))  # 13 steps per epoch
    run.engine.prepare(run.state)
    if steps_per_call == "auto":
        assert sorted(run.engine.k_timings) == [1, 6]   # the candidates 1 and 13, moved to divisors of 6
        assert run.engine.k in (1, 6)
    else:
        assert run.engine.k == 6                         # the largest divisor of 6 not above 10 or 13


def test_auto_times_its_candidates_on_the_runs_timeline_and_charges_them_to_compile(tmp_path):
    """`steps_per_call: auto` measures each K on the run's own clock (no timer of its own): on
    a fake clock where every call takes 1 s whatever its length, each K measures exactly 1/K s
    a step, the longest wins, and the measuring time is all `compile`."""
    from jaxtrain.training.hooks.protocol import RunContext
    from jaxtrain.util.clock import RunClock
    from jaxtrain.util.events import Console, JsonlWriter
    from jaxtrain.util.phases import Phase
    now = [0.0]
    clock = RunClock(lambda: now[0])
    ctx = RunContext(console=Console("none"), events=JsonlWriter(tmp_path / "m.jsonl"), clock=clock)
    cfg = load_config({"model": {"hidden_sizes": [16]}, "data": {"batch_size": 16},
                       "train": {"steps_per_call": "auto", "on_device_fraction": 1.0},
                       "parallel": {"data_axis_size": 1}})
    ds = _problem()
    run = setup(cfg, MLP(6, (16,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    call, calls = run.engine._call, []

    def one_second_call(*args):
        out = call(*args)
        now[0] += 1.0
        calls.append(args[1])
        return out
    run.engine._call = one_second_call
    with clock.phase(Phase.COMPILE):
        run.engine.prepare(run.state)
    assert run.engine.k_timings and all(t == pytest.approx(1.0 / k) for k, t in run.engine.k_timings.items())
    assert run.engine.k == max(run.engine.k_timings)
    assert {phase: s for phase, s in clock.totals().items() if s} == {Phase.COMPILE: float(len(calls))}
