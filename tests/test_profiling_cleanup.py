"""A run that fails inside the trace window must not leave the process-wide profiler on."""

import jax
import numpy as np
import pytest

from jaxtrain import train
from jaxtrain.util.errors import NonFiniteError


def test_failed_run_inside_the_trace_window_frees_the_profiler(tmp_path):
    overrides = {"train.profile": True, "train.profile_trace_calls": 1000, "train.steps_per_call": 1,
                 "train.epochs": 3, "optimizer.learning_rate": 1e30, "optimizer.name": "sgd",
                 "logging.progress": "none", "checkpoint.enabled": False,
                 "parallel.data_axis_size": 1}
    with pytest.raises(NonFiniteError):
        train("digits_mlp", workdir=tmp_path / "run", overrides=overrides)
    # The failed run's trace was stopped, so written out (a trace still running writes nothing).
    assert list((tmp_path / "run" / "trace").rglob("*.xplane.pb")), "the run's trace was never stopped"
    # The profiler accepts a new trace (it raises while another is running) and writes it.
    jax.profiler.start_trace(str(tmp_path / "trace"))
    np.asarray(jax.numpy.ones(3) * 2)
    jax.profiler.stop_trace()
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))
