"""The host-fed input pipeline: every backend (NumPy, tf.data, grain, grain with worker
processes) gives the same batches in the same order; a batch plan started at batch s is
the tail of the whole epoch's (a resumed epoch seeks); a process gathers only its rows;
and a resumed streamed run reads exactly the batches it has not trained on, no others."""

import json
import shutil

import numpy as np
import pytest

from jaxtrain import resume, train
from jaxtrain.config.data import DataConfig
from jaxtrain.data import load_dataset, streaming
from jaxtrain.data.dataset import batch_plan, epoch_permutation


BLOBS = dict(source="synthetic", name="blobs", synthetic_rows=300, val_fraction=0.0, test_fraction=0.2)


def _batches(ds, epoch, start=0, rows=slice(None)):
    return list(ds.train_batches(16, 7, epoch, start, rows))


def test_batch_plan_is_the_epoch_permutation_padded_and_sliced():
    idx, mask = batch_plan(37, 8, seed=3, epoch=2)
    order = epoch_permutation(37, 3, 2)
    assert idx.shape == mask.shape == (5, 8)
    np.testing.assert_array_equal(idx.ravel()[:37], order)
    assert mask.sum() == 37 and (idx.ravel()[37:] == 0).all() and (mask.ravel()[37:] == 0).all()
    tail, tail_mask = batch_plan(37, 8, seed=3, epoch=2, start=3, rows=slice(2, 6))
    np.testing.assert_array_equal(tail, idx[3:, 2:6])
    np.testing.assert_array_equal(tail_mask, mask[3:, 2:6])


BACKEND_PACKAGES = {"grain": "grain", "tfdata": "tensorflow"}


@pytest.fixture(scope="module")
def numpy_backend():
    return load_dataset(DataConfig(**BLOBS))


@pytest.fixture(scope="module", params=list(BACKEND_PACKAGES))
def backend(request):
    """(name, the same data through that host backend): a backend whose package is missing is
    a visible skip of its own tests, never a silent drop from a comparison. grain with worker
    processes has its own test (each new position starts the processes anew)."""
    pytest.importorskip(BACKEND_PACKAGES[request.param])
    return request.param, load_dataset(DataConfig(backend=request.param, **BLOBS))


@pytest.mark.parametrize("epoch, start, rows", [(0, 0, slice(None)), (3, 5, slice(None)), (1, 2, slice(4, 12))])
def test_every_backend_gives_the_numpy_batches(numpy_backend, backend, epoch, start, rows):
    ref, (name, ds) = numpy_backend, backend
    assert ref.train is not None and ds.train is None   # a host backend feeds from the host
    want = _batches(ref, epoch, start, rows)
    assert len(want) == 15 - start     # 240 training rows, batch 16
    got = _batches(ds, epoch, start, rows)
    assert len(got) == len(want), name
    for (gx, gy, gm), (wx, wy, wm) in zip(got, want):
        np.testing.assert_allclose(gx, wx, rtol=0, atol=1e-6 if name == "tfdata" else 0, err_msg=name)
        np.testing.assert_array_equal(gy, wy, err_msg=name)
        np.testing.assert_array_equal(gm, wm, err_msg=name)


def test_grain_workers_give_the_numpy_batches_and_start_once_a_run(numpy_backend):
    """Two worker processes: the same batches as NumPy; the next epoch continues the pipeline
    (the processes start once), a seek (another start, other rows) begins a new one there."""
    pytest.importorskip("grain")
    feed = load_dataset(DataConfig(backend="grain", workers=2, **BLOBS)).batcher
    ref = numpy_backend
    got = list(feed(16, 7, 0))
    pipeline = feed._iterator
    got += list(feed(16, 7, 1))
    assert feed._iterator is pipeline
    got += list(feed(16, 7, 3, 4, slice(4, 12)))
    assert feed._iterator is not pipeline
    want = _batches(ref, 0) + _batches(ref, 1) + _batches(ref, 3, 4, slice(4, 12))
    assert len(got) == len(want) == 15 + 15 + 11
    for a, b in zip(got, want):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    feed.close()


def test_seeking_equals_the_tail_of_the_epoch(numpy_backend, backend):
    for name, ds in (("numpy", numpy_backend), backend):
        whole = _batches(ds, 2)
        tail = _batches(ds, 2, start=9)
        assert len(tail) == len(whole) - 9, name
        for a, b in zip(tail, whole[9:]):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v, err_msg=name)


# ---------------------------------------------------------------- a resumed streamed run


def _csv(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = ["a,b,c,d,y"] + [",".join(f"{v:.5f}" for v in row) + f",{t}" for row, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


class ReadLog:
    """Records the training positions of every batch the streaming cache is asked for."""

    def __init__(self, monkeypatch):
        self.reads = []
        gather = streaming.CacheGather.__call__

        def logged(this, i):
            self.reads.append(np.array(i))
            return gather(this, i)
        monkeypatch.setattr(streaming.CacheGather, "__call__", logged)


@pytest.mark.parametrize("backend", ["grain", "tfdata"])
def test_resumed_streamed_run_reads_no_batch_it_skips(tmp_path, monkeypatch, backend):
    """Steps 23.. of a 3-epoch run (15 steps an epoch) after a cut at step 23: the resumed run
    reads batches 8..14 of epoch 1 and all of epoch 2, each once, none before them (parallel
    readers may ask in any order; grain's run-long pipeline may read ahead into the epoch
    after the last); and it ends where the uninterrupted run ends."""
    pytest.importorskip(BACKEND_PACKAGES[backend])
    _csv(tmp_path / "d.csv")
    cfg = {"name": "stream", "data": {"source": "csv", "path": str(tmp_path / "d.csv"), "target": "y",
                                      "backend": backend, "streaming": True, "batch_size": 16,
                                      "val_fraction": 0.0, "test_fraction": 0.2,
                                      "cache_dir": str(tmp_path)},
           "model": {"hidden_sizes": [8]}, "train": {"epochs": 3, "steps_per_call": 2, "seed": 5},
           "checkpoint": {"every_steps": 22, "every_epochs": 100, "keep": 10}, "logging": {"progress": "none"}}
    full = tmp_path / "full"
    train(cfg, workdir=full)
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for step in (44, 45):
        shutil.rmtree(cut / "checkpoints" / str(step))
    (cut / "summary.json").unlink()

    log = ReadLog(monkeypatch)
    resume(cut)
    n = 240
    want = [*batch_plan(n, 16, 5, 1, start=8)[0], *batch_plan(n, 16, 5, 2)[0]]
    beyond = {tuple(b) for b in batch_plan(n, 16, 5, 3)[0]}
    needed = sorted(tuple(r) for r in log.reads if tuple(r) not in beyond)
    assert len(want) == 7 + 15
    assert needed == sorted(map(tuple, want))
    summary = [json.loads((d / "summary.json").read_text()) for d in (full, cut)]
    assert summary[0]["test"] == summary[1]["test"] and summary[0]["train"]["loss"] == summary[1]["train"]["loss"]
