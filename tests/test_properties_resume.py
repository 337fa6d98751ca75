"""A run cut at a random step and resumed equals the straight run: the final state bit for bit,
and every per-epoch record of metrics.jsonl (loss, accuracy, step), training and evaluation.
One straight run (a checkpoint after every step) serves every example."""

import shutil

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_escapes import RESUMED, cut_at, records

from jaxtrain import resume, train
from jaxtrain.ckpt.checkpoint import Checkpointer

STEPS = 45  # 3 epochs of 15


def _final_state(workdir):
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        return ckpt.restore_raw()
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    full = tmp_path_factory.mktemp("straight") / "run"
    cfg = {**RESUMED, "checkpoint": {**RESUMED["checkpoint"], "every_steps": 1, "keep": STEPS + 1}}
    train(cfg, workdir=full)
    return full, _final_state(full)


@settings(max_examples=3, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=st.integers(1, STEPS - 1))
def test_a_run_cut_at_any_step_and_resumed_equals_the_straight_run(straight, tmp_path_factory, step):
    full, (state_full, meta_full) = straight
    cut = tmp_path_factory.mktemp("cut") / "run"
    cut_at(full, cut, step)
    assert max(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit()) == step
    resume(cut)
    state_cut, meta_cut = _final_state(cut)
    assert meta_cut["step"] == meta_full["step"] == STEPS
    leaves_full, leaves_cut = jax.tree.leaves(state_full), jax.tree.leaves(state_cut)
    assert len(leaves_full) == len(leaves_cut) and leaves_full
    for a, b in zip(leaves_full, leaves_cut):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert records(cut) == records(full) and [r["step"] for r in records(full)] == [15, 30, 45]
    assert records(cut, "eval") == records(full, "eval")
    shutil.rmtree(cut)
