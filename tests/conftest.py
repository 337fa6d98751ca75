"""Test setup: 8 simulated CPU devices, so sharding code runs here as on a GPU box; a private
cache folder for the session."""

import atexit
import os
import shutil
import tempfile

# Tests never read or write the user's cache: jaxtrain's cache folder (the measured peak
# FLOP/s, XLA's compilation cache, decoded images; util/files.py:user_cache_dir) lives in a
# folder of this session's own, set before jaxtrain is imported (its subprocesses inherit
# it) and removed at the end.
PRIVATE_CACHE = tempfile.mkdtemp(prefix="jaxtrain-tests-cache-")
os.environ["XDG_CACHE_HOME"] = PRIVATE_CACHE
atexit.register(shutil.rmtree, PRIVATE_CACHE, True)
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxtrain.data import Dataset, Split  # noqa: E402
from jaxtrain.util.events import Console, JsonlWriter  # noqa: E402


@pytest.fixture
def quiet():
    return Console("none")


def make_dataset(x, y, task="regression", num_classes=None, test_fraction=0.25, name="arrays"):
    """A Dataset from arrays, without preprocessing (inputs taken as already normalized)."""
    n_test = int(len(x) * test_fraction)
    y = y.astype(np.int32 if task == "classification" else np.float32)
    return Dataset(task=task, num_classes=num_classes, feature_shape=tuple(x.shape[1:]),
                   train=Split(x[n_test:].astype(np.float32), y[n_test:]), val=None,
                   test=Split(x[:n_test].astype(np.float32), y[:n_test]), name=name)


@pytest.fixture(scope="module")
def blobs():
    """3 classes from 6 features. 300 training rows at batch 32: 10 steps per epoch, the last
    one 12 rows, so on 8 devices some get only padding; 2 epochs = 20 steps."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    return make_dataset(x, y, "classification", 3)


@pytest.fixture
def ctx(tmp_path: pathlib.Path):
    from jaxtrain.training.context import RunContext
    events = JsonlWriter(tmp_path / "metrics.jsonl")
    yield RunContext(console=Console("none"), events=events, workdir=tmp_path)
    events.close()
