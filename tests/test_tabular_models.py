"""The tabular mlp (model/tabular.py): piecewise-linear and periodic numeric embeddings,
learned category embeddings, and k-member ensembles trained as one model, each against an
independent NumPy (or separately trained) answer; runs with them resume, predict and score."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from run_files import straight_and_resumed
from jaxtrain import train
from jaxtrain.ckpt.checkpoint import Checkpointer
from jaxtrain.cli.main import main
from jaxtrain.config.schema import ModelConfig, load_config
from jaxtrain.data.user_input import read_input
from jaxtrain.data.bins import quantile_edges
from jaxtrain.data.preprocess import split_indices
from jaxtrain.engine.step import init_state, make_train_step, split_model
from jaxtrain.model.models import build_model
from jaxtrain.model.tabular import (CategoryEmbedding, PeriodicEmbedding, PiecewiseLinearEmbedding, category_dim)
from jaxtrain.runs.trained import load_run, model_from_stats
from jaxtrain.util.events import Console


# ---------------------------------------------------------------- NumPy references


def ple_reference(value: float, edges: list[float]) -> list[float]:
    """One value's piecewise-linear components, bin by bin, as the papers define them."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append(1.0 if value >= hi else 0.0 if value <= lo else (value - lo) / (hi - lo))
    return out


def edges_reference(col: np.ndarray, bins: int) -> list[float]:
    q = sorted({float(np.float32(np.percentile(col.astype(np.float64), 100.0 * t / bins))) for t in range(bins + 1)})
    return q if len(q) > 1 else [q[0], q[0] + 1.0]


def padded_reference(x: np.ndarray, edges: list[list[float]]) -> np.ndarray:
    """(rows, columns) -> (rows, columns * T): each column's components, zeros after its own bins."""
    t = max(len(e) - 1 for e in edges)
    out = np.zeros((len(x), len(edges), t))
    for i in range(len(x)):
        for j, e in enumerate(edges):
            out[i, j, :len(e) - 1] = ple_reference(x[i, j], e)
    return out.reshape(len(x), -1)


def test_piecewise_linear_encoding_equals_the_numpy_reference_on_random_columns():
    rng = np.random.default_rng(0)
    train_cols = [rng.normal(0, 1, 500), rng.lognormal(0, 1, 500), rng.integers(0, 4, 500).astype(float),
                  np.full(500, 2.5)]   # a skewed column, a discrete one (edges merge), a constant one
    edges = [quantile_edges(c, 10) for c in train_cols]
    for got, col in zip(edges, train_cols):
        assert got == pytest.approx(edges_reference(col, 10), abs=1e-6)
    assert [len(e) for e in edges][2:] == [4, 2]       # 4 distinct values -> 4 edges; constant -> one bin
    x = np.stack([rng.normal(0, 2, 64), rng.lognormal(0, 1.5, 64), rng.integers(-1, 6, 64).astype(float),
                  rng.normal(2.5, 1, 64)], axis=1)
    x[:4] = [[-10, -1, -5, 2.5], [10, 100, 9, 3.6], [edges[0][0], edges[1][-1], 2, 2.0], [0, 1, 3, 3.4]]
    module = PiecewiseLinearEmbedding(tuple(map(tuple, edges)), 0, rngs=nnx.Rngs(0))
    got = np.asarray(module(jnp.asarray(x, jnp.float32)))
    want = padded_reference(x.astype(np.float32), edges)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[1].reshape(4, -1)[0].sum() == len(edges[0]) - 1    # past the last edge: all ones


# ---------------------------------------------------------------- a run with bins, from raw rows


def _write_rows(path, rows, header=("a", "b", "c", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    a, c = rng.normal(0, 2, n), rng.lognormal(2, 1, n)
    b = rng.choice(["red", "green", "blue", "teal"], n)
    score = a + (b == "red") * 2.0 - 0.1 * c
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    return [[f"{a[i]:.6f}" if i % 17 else "", b[i], f"{c[i]:.6f}", str(y[i])] for i in range(n)]


def _train_table(tmp_path, model, epochs=2, **sections):
    rows = _table()
    _write_rows(tmp_path / "data.csv", rows)
    cfg = {"data": {"source": "csv", "path": str(tmp_path / "data.csv"), "target": "label",
                    "task": "classification", "batch_size": 16},
           "model": {"hidden_sizes": [8], **model}, "train": {"epochs": epochs},
           "parallel": {"data_axis_size": 1}, "logging": {"progress": "none"}, **sections}
    run = tmp_path / "run"
    train(cfg, workdir=run, console=Console("none"))
    return rows, run


def test_a_runs_bin_edges_come_from_the_training_split_and_encode_raw_rows(tmp_path):
    rows, run = _train_table(tmp_path, {"numeric_embedding": "piecewise_linear", "bins": 12, "embedding_dim": 0})
    cfg, stats = load_run(run)
    train_idx, _, _ = split_indices(len(rows), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed)
    shift, scale = np.asarray(stats.normalize.shift), np.asarray(stats.normalize.scale)

    def normalized(values, j, name):
        v = np.array([float(s) if s else np.nan for s in values])
        v[np.isnan(v)] = stats.fills[name]
        return ((v.astype(np.float32) - np.float32(shift[j])) / np.float32(scale[j])).astype(np.float32)
    col = {"a": 0, "c": 2}
    for j, name in enumerate(stats.numeric_columns):
        train_values = normalized([rows[i][col[name]] for i in train_idx], j, name)
        all_values = normalized([r[col[name]] for r in rows], j, name)
        assert stats.bin_edges[j] == pytest.approx(edges_reference(train_values, 12), abs=1e-5)
        assert stats.bin_edges[j] != pytest.approx(edges_reference(all_values, 12), abs=1e-5)  # not every row
    # Raw rows: a missing value, values past the last edge and below the first, an unseen category.
    new = [["", "red", "7.5"], ["1e6", "green", "-50"], ["-1e6", "purple", "1e9"], ["0.3", "blue", ""]]
    _write_rows(tmp_path / "new.csv", new, ("a", "b", "c"))
    x = read_input(tmp_path / "new.csv", stats, cfg.data).x
    model = model_from_stats(cfg, stats)
    got = np.asarray(model.numeric(jnp.asarray(x[:, :2])))
    num = np.stack([normalized([r[col[n]] for r in new], j, n) for j, n in enumerate(stats.numeric_columns)], 1)
    clipped = np.clip(num, *np.asarray(stats.outliers.bounds).T) if stats.outliers.bounds else num
    np.testing.assert_allclose(got, padded_reference(clipped, stats.bin_edges), atol=1e-5)


# ---------------------------------------------------------------- periodic embeddings


def _periodic_reference(x, c, kernel, bias):
    angle = 2 * np.pi * c[None] * x[:, :, None]
    z = np.concatenate([np.sin(angle), np.cos(angle)], -1)
    return np.maximum(np.einsum("bci,cio->bco", z, kernel) + bias, 0.0).reshape(len(x), -1)


def test_periodic_embedding_shape_values_and_gradient_against_numpy():
    rng = np.random.default_rng(1)
    module = PeriodicEmbedding(3, 4, 0.5, 5, rngs=nnx.Rngs(2))
    x = rng.normal(0, 1, (6, 3)).astype(np.float32)
    out = module(jnp.asarray(x))
    assert out.shape == (6, 15) and module.out_features == 15
    c, kernel, bias = (np.asarray(v, np.float64) for v in
                       (module.frequencies[...], module.linear.kernel[...], module.linear.bias[...]))
    np.testing.assert_allclose(np.asarray(out), _periodic_reference(x, c, kernel, bias), rtol=1e-4, atol=1e-5)
    weights = rng.normal(0, 1, (6, 15))

    def loss(m):
        return jnp.sum(m(jnp.asarray(x)) * weights)
    grad = np.asarray(nnx.grad(loss)(module).frequencies[...])
    numeric, eps = np.zeros_like(c), 1e-6
    for idx in np.ndindex(c.shape):
        up, down = c.copy(), c.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (np.sum(_periodic_reference(x, up, kernel, bias) * weights)
                        - np.sum(_periodic_reference(x, down, kernel, bias) * weights)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3 * np.abs(numeric).max())


# ---------------------------------------------------------------- learned categories


def test_learned_categories_look_up_their_vector_and_unseen_ones_the_reserved_vector():
    emb = CategoryEmbedding(5, rngs=nnx.Rngs(0))
    assert emb.out_features == category_dim(5) == round(1.6 * 5 ** 0.56) and category_dim(10 ** 6) == 16
    onehot = np.zeros((3, 5), np.float32)
    onehot[0, 2], onehot[1, 4] = 1, 1           # row 2: no category seen in training
    got = np.asarray(emb(jnp.asarray(onehot)))
    table, unseen = np.asarray(emb.table[...]), np.asarray(emb.unseen[...])
    np.testing.assert_allclose(got, np.stack([table[2], table[4], unseen]), atol=1e-7)


# ---------------------------------------------------------------- ensembles


def _build(task, k, seed=0, hidden=(8, 4), dropout=0.0):
    cfg = ModelConfig(hidden_sizes=hidden, ensemble=k, dropout=dropout)
    return build_model(cfg, (5,), 3 if task == "classification" else 1, seed=seed, platform="cpu", task=task)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_ensemble_of_identical_members_equals_one_model(task):
    ens, one = _build(task, 4), _build(task, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (7, 5)), jnp.float32)
    kernels = [one.layers[i].kernel[...] for i in range(len(one.layers))] + [one.head.kernel[...]]
    assert all(np.array_equal(np.asarray(k[0]), np.asarray(want)) for k, want in
               zip([v[...] for v in ens.kernels], kernels))    # member 0: the plain model's initialisation
    for stacked in list(ens.kernels) + list(ens.biases):        # every member a copy of member 0
        stacked[...] = jnp.broadcast_to(stacked[...][0], stacked[...].shape)
    members = np.asarray(ens(x))                                # training mode: (batch, k, out)
    assert members.shape == (7, 4, 3 if task == "classification" else 1)
    np.testing.assert_allclose(members, np.repeat(np.asarray(one(x))[:, None], 4, 1), rtol=1e-6, atol=1e-6)
    ens.eval()
    one.eval()
    got, want = np.asarray(ens(x)), np.asarray(one(x))
    if task == "classification":     # log of the mean probability: the same softmax
        got, want = np.asarray(jax.nn.softmax(got)), np.asarray(jax.nn.softmax(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_ensemble_trains_as_k_models_with_their_seeds_on_the_mean_loss(task):
    k, steps, lr = 3, 6, 0.05
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0, 1, (16, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32) if task == "classification" else \
        jnp.asarray(rng.normal(0, 1, 16), jnp.float32)
    mask = jnp.ones(16, jnp.float32)
    tx = optax.sgd(lr)        # plain SGD: a sum of the losses instead of their mean would show
    train_def, _, params, rest = split_model(_build(task, k))
    step = jax.jit(make_train_step(train_def, tx, task))
    state = init_state(params, rest, tx)
    for _ in range(steps):
        state, _ = step(state, (x, y, mask))

    separate = [_build(task, 1, seed=j) for j in range(k)]
    graphdef, sep_params = nnx.split(separate[0], nnx.Param)[0], [nnx.state(m, nnx.Param) for m in separate]

    def mean_loss(all_params):
        losses = []
        for p in all_params:
            out = nnx.merge(graphdef, p)(x)
            losses.append(optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
                          if task == "classification" else jnp.mean(jnp.square(out[:, 0] - y)))
        return sum(losses) / k
    opt = tx.init(sep_params)
    for _ in range(steps):
        updates, opt = tx.update(jax.grad(mean_loss)(sep_params), opt)
        sep_params = optax.apply_updates(sep_params, updates)
    got = state.params
    for j, p in enumerate(sep_params):
        layers = [p["layers"][i] for i in range(len(p["layers"]))] + [p["head"]]
        for i, layer in enumerate(layers):
            np.testing.assert_allclose(np.asarray(got["kernels"][i][...][j]), np.asarray(layer["kernel"][...]),
                                       atol=1e-5)
            np.testing.assert_allclose(np.asarray(got["biases"][i][...][j]), np.asarray(layer["bias"][...]),
                                       atol=1e-5)


def test_the_tabular_keys_are_checked_in_one_line(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "r"), "--set", "model.ensemble=0"]) == 2
    assert "model.ensemble" in capsys.readouterr().err
    assert main(["train", "--workdir", str(tmp_path / "r"), "--set", "model.name=cnn",
                 "--set", "model.ensemble=2"]) == 2
    assert "model.name=mlp" in capsys.readouterr().err
    assert main(["train", "--workdir", str(tmp_path / "r"), "--set", "model.embedding_dim=-1"]) == 2
    assert "model.embedding_dim" in capsys.readouterr().err


# ---------------------------------------------------------------- runs: resume, predict, eval --input


BLOBS = {"data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 400, "batch_size": 16,
                  "val_fraction": 0.2, "test_fraction": 0.2},
         "model": {"hidden_sizes": [16], "dropout": 0.2, "ensemble": 3},
         "optimizer": {"name": "adam", "learning_rate": 0.01},
         "train": {"epochs": 3, "steps_per_call": 2, "ema_decay": 0.9},
         "checkpoint": {"every_steps": 22, "every_epochs": None, "every_seconds": None, "keep": 10},
         "logging": {"progress": "none"}}


def _state(workdir):
    ckpt = Checkpointer(workdir / "checkpoints")
    state, meta = ckpt.restore_raw()
    ckpt.close()
    return state, meta


@pytest.mark.parametrize("devices", [1, None], ids=["1dev", "8dev"])
def test_an_ensemble_run_resumes_bit_exactly(tmp_path, devices):
    cfg = json.loads(json.dumps(BLOBS))
    cfg["parallel"] = {"data_axis_size": devices}
    full, cut = straight_and_resumed(cfg, tmp_path, dropped_steps=(44, 45))
    (a, meta_a), (b, meta_b) = _state(full), _state(cut)
    assert meta_a["step"] == meta_b["step"] == 45
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) and any(np.ndim(v) == 3 and np.shape(v)[0] == 3 for v in leaves_a)
    for u, v in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("strategy", ["sharded", "pmap", "fsdp"])
def test_an_ensemble_trains_alike_on_eight_devices(tmp_path, strategy):
    def params(devices, name):
        cfg = json.loads(json.dumps(BLOBS))
        cfg["model"]["dropout"] = 0.0
        cfg["train"] = {"epochs": 2, "steps_per_call": 3}
        cfg["checkpoint"] = {"every_epochs": 1, "every_seconds": None}
        cfg["parallel"] = {"data_axis_size": devices, "strategy": strategy if devices > 1 else "sharded"}
        train(cfg, workdir=tmp_path / name)
        return _state(tmp_path / name)[0]["params"]
    one, eight = params(1, "one"), params(8, "eight")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
                 one, eight)


def test_predict_and_eval_input_on_an_ensemble_with_embeddings_serve_the_mean_of_the_members(tmp_path, capsys):
    model = {"ensemble": 3, "numeric_embedding": "periodic", "frequencies": 4, "category_embedding": "learned"}
    rows, run = _train_table(tmp_path, model, checkpoint={"enabled": True})
    cfg, stats = load_run(run)
    _, _, test_idx = split_indices(len(rows), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed)
    _write_rows(tmp_path / "new.csv", [rows[i] for i in test_idx])
    assert main(["predict", str(run), "--input", str(tmp_path / "new.csv"), "--full-precision",
                 "--output", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        predicted = list(csv.DictReader(f))
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(3)] for r in predicted])
    # The members by hand: the restored model in training mode (no dropout here) gives (rows, k, classes).
    from jaxtrain.runs.trained import restore_model
    net = model_from_stats(cfg, stats)
    _, params, rest = restore_model(run, cfg, net)
    train_def = split_model(net)[0]
    x = read_input(tmp_path / "new.csv", stats, cfg.data).x
    members = np.asarray(nnx.merge(train_def, params, rest)(jnp.asarray(x)))
    assert members.shape == (len(test_idx), 3, 3)
    np.testing.assert_allclose(probs, np.asarray(jax.nn.softmax(members, -1)).mean(1), atol=1e-5)
    assert main(["eval", str(run), "--input", str(tmp_path / "new.csv")]) == 0
    out = capsys.readouterr().out
    labels = np.array([int(rows[i][3]) for i in test_idx])
    accuracy = float(np.mean(probs.argmax(1) == labels))
    assert f"{accuracy:.4f}" in out or f"{accuracy:.3f}" in out, out


def test_a_streamed_run_fits_the_same_bin_edges_and_predicts_with_them(tmp_path):
    model = {"numeric_embedding": "piecewise_linear", "bins": 10}
    (tmp_path / "mem").mkdir()
    (tmp_path / "stream").mkdir()
    _, run_mem = _train_table(tmp_path / "mem", model, epochs=1)
    rows, run_stream = _train_table(tmp_path / "stream", model, epochs=1,
                                    data={"source": "csv", "path": str(tmp_path / "stream" / "data.csv"),
                                          "target": "label", "task": "classification", "batch_size": 16,
                                          "streaming": True})
    (_, mem), (_, streamed) = load_run(run_mem), load_run(run_stream)
    assert len(streamed.bin_edges) == 2
    for a, b in zip(mem.bin_edges, streamed.bin_edges):
        assert a == pytest.approx(b, abs=1e-5)      # every training row, shuffled: the same quantiles
    _write_rows(tmp_path / "new.csv", [r[:3] for r in rows[:20]], ("a", "b", "c"))
    assert main(["predict", str(run_stream), "--input", str(tmp_path / "new.csv"),
                 "--output", str(tmp_path / "p.csv")]) == 0


def test_a_vectorized_sweep_of_ensembles_equals_its_separate_runs(tmp_path):
    from jaxtrain.runs.sweep import run_sweep
    from run_files import read_results
    cfg = {"data": {"source": "synthetic", "name": "blobs", "synthetic_rows": 240, "batch_size": 32},
           "model": {"hidden_sizes": [16], "dropout": 0.1, "ensemble": 2}, "optimizer": {"name": "sgd"},
           "train": {"epochs": 2}}
    grid = ["optimizer.learning_rate=0.1,0.02"]
    from jaxtrain.runs.vsweep import why_not_vectorized
    assert why_not_vectorized(load_config(cfg)) is None       # the two points train as one program
    run_sweep(cfg, grid, workdir=tmp_path / "vec", vectorized=True, console=Console("none"))
    run_sweep(cfg, grid, workdir=tmp_path / "sep", console=Console("none"))
    for a, b in zip(read_results(tmp_path / "vec"), read_results(tmp_path / "sep")):
        for key in ("test.loss", "test.accuracy", "val.loss", "train.loss"):
            assert abs(float(a[key]) - float(b[key])) <= 1e-5, (a["point"], key, a[key], b[key])


def test_the_default_mlp_is_the_plain_mlp_and_its_config_names_no_tabular_key(tmp_path):
    """The defaults (none, onehot, 1) leave the mlp (and so the default digits run) as it was."""
    from jaxtrain.config.schema import dump_yaml
    from jaxtrain.model.models import MLP
    from jaxtrain.model.tabular import TableLayout
    layout = TableLayout(3, (2,), 0, ((0.0, 1.0),) * 3)
    got = build_model(ModelConfig(hidden_sizes=(8,)), (5,), 3, seed=4, platform="cpu", layout=layout)
    want = MLP(5, (8,), 3, rngs=nnx.Rngs(params=4, dropout=5))
    assert type(got) is MLP
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 nnx.state(got, nnx.Param), nnx.state(want, nnx.Param))
    text = dump_yaml(load_config(None))
    assert "ensemble" not in text and "numeric_embedding" not in text
    assert "bins: 12" in dump_yaml(load_config(None, ["model.numeric_embedding=piecewise_linear", "model.bins=12"]))


def test_a_bfloat16_ensemble_trains_on_cpu_and_stays_near_float32():
    """bf16 inputs with fp32 results, one 2-D dot per member: a batched one does not run on CPUs."""
    cfg = ModelConfig(hidden_sizes=(16,), ensemble=3)
    x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (8, 5)), jnp.float32)
    nets = [build_model(cfg, (5,), 3, seed=0, platform="cpu", compute_dtype=dt) for dt in (jnp.bfloat16, jnp.float32)]
    grads = [jax.jit(nnx.grad(lambda m: jnp.sum(jnp.square(m(x)))))(net) for net in nets]
    np.testing.assert_allclose(np.asarray(nets[0](x)), np.asarray(nets[1](x)), rtol=5e-2, atol=5e-2)
    for g16, g32 in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        assert g16.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g16), np.asarray(g32), rtol=0.1, atol=0.1 * float(np.abs(g32).max()))
