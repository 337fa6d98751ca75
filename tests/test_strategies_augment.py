"""Image augmentation: NumPy references for shifts and rotations, seeded draws, eval untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_dataset
from flax import nnx

from jaxtrain import load_config
from jaxtrain.model.augment import image_shape, make_augment, rotate_images, shift_images
from jaxtrain.model.models import cnn_image_shape
from jaxtrain.config.schema import AugmentConfig
from jaxtrain.util.errors import ConfigError
from jaxtrain.training.loop import fit
from jaxtrain.training.setup import setup
from jaxtrain.engine.plan import make_plan
from jaxtrain.model.models import MLP


def _numpy_shift(img, dy, dx):
    """np.roll, but the rows/columns that wrap around take the nearest edge pixel instead."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((h, h), (w, w), (0, 0)), mode="edge")
    return padded[h - dy:2 * h - dy, w - dx:2 * w - dx]


def test_shift_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 7, 5, 2)).astype(np.float32)
    dy = np.array([0, 1, -2, 3, -1, 0], np.int32)
    dx = np.array([2, -1, 0, 1, -3, 0], np.int32)
    got = np.asarray(shift_images(jnp.asarray(images), jnp.asarray(dy), jnp.asarray(dx)))
    for b in range(6):
        want = _numpy_shift(images[b], dy[b], dx[b])
        np.testing.assert_array_equal(got[b], want)
        # Away from the filled border it is exactly np.roll.
        rolled = np.roll(images[b], (dy[b], dx[b]), axis=(0, 1))
        rows = slice(max(dy[b], 0), 7 + min(dy[b], 0))
        cols = slice(max(dx[b], 0), 5 + min(dx[b], 0))
        np.testing.assert_array_equal(got[b][rows, cols], rolled[rows, cols])


def test_rotation_by_right_angles_and_zero():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    got = np.asarray(rotate_images(jnp.asarray(images), jnp.array([90.0, -90.0, 0.0])))
    np.testing.assert_allclose(got[0], np.rot90(images[0], 1), atol=1e-5)
    np.testing.assert_allclose(got[1], np.rot90(images[1], -1), atol=1e-5)
    np.testing.assert_array_equal(got[2], images[2])


def test_image_shape_inference():
    assert image_shape((8, 8), None) == (8, 8, 1)
    assert image_shape((12,), (2, 3, 2)) == (2, 3, 2)
    for flat in ((10,), (784,)):  # no guess from the size, as the CNN makes none
        with pytest.raises(ConfigError, match="no image shape.*train.augment.image_shape"):
            image_shape(flat, None)
        with pytest.raises(ConfigError, match="cnn needs image data"):
            cnn_image_shape(load_config({"model": {"name": "cnn", "channels": [2], "kernel_sizes": [3]}}).model,
                            flat, None)


def test_draws_are_keyed_by_seed_and_step():
    aug = make_augment(AugmentConfig(shift=2, rotate=10, noise=0.1), (8, 8), seed=3)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(16, 64)).astype(np.float32))
    a0, a0_again, a1 = aug(x, jnp.int32(0)), aug(x, jnp.int32(0)), aug(x, jnp.int32(1))
    np.testing.assert_array_equal(a0, a0_again)
    assert a0.shape == x.shape and not np.array_equal(a0, a1) and not np.array_equal(a0, x)
    other_seed = make_augment(AugmentConfig(shift=2, rotate=10, noise=0.1), (8, 8), seed=4)
    assert not np.array_equal(other_seed(x, jnp.int32(0)), a0)
    noise_only = make_augment(AugmentConfig(noise=0.5), (8, 8), seed=3)
    diff = np.asarray(noise_only(x, jnp.int32(7)) - x)
    assert abs(diff.std() - 0.5) < 0.05 and abs(diff.mean()) < 0.05
    assert make_augment(AugmentConfig(), (8, 8), seed=3) is None
    assert not AugmentConfig() and AugmentConfig(shift=1)


def test_training_sees_augmented_inputs_and_evaluation_does_not(ctx):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(96, 16)).astype(np.float32)
    y = rng.integers(0, 2, 96).astype(np.int32)
    ds = make_dataset(x, y, "classification", 2)

    def run_with(augment):
        cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 72},
                           "optimizer": {"name": "sgd", "learning_rate": 0.1},
                           "train": {"epochs": 1, "augment": augment, "steps_per_call": 1},
                           "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False}})
        return setup(cfg, MLP(16, (8,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))

    plain, augmented = run_with({}), run_with({"shift": 1, "noise": 0.3, "image_shape": [4, 4]})
    # Evaluation: the same parameters give the same outputs, augmentation or not.
    np.testing.assert_array_equal(plain.evaluator.outputs(plain.state.params, plain.state.rest, ds.test.x),
                                  augmented.evaluator.outputs(augmented.state.params, augmented.state.rest,
                                                              ds.test.x))
    # Training: one full-batch step equals a plain step on the inputs augmented for step 0.
    aug = make_augment(augmented.cfg.train.augment, (16,), seed=0)
    order = np.random.default_rng([0, 0]).permutation(72)  # epoch_permutation(72, seed 0, epoch 0)
    xb = np.asarray(aug(jnp.asarray(ds.train.x[order]), jnp.int32(0)))
    fit(augmented)
    ds2 = make_dataset(np.concatenate([ds.test.x, xb]), np.concatenate([ds.test.y, ds.train.y[order]]),
                       "classification", 2)
    cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 72},
                       "optimizer": {"name": "sgd", "learning_rate": 0.1},
                       "train": {"epochs": 1, "steps_per_call": 1},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False}})
    reference = setup(cfg, MLP(16, (8,), 2, rngs=nnx.Rngs(0)), ds2, ctx, plan=make_plan(cfg, ds2))
    fit(reference)  # permutes the pre-augmented rows; a full batch's mean gradient ignores order
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 augmented.state.params, reference.state.params)
    fit(plain)
    assert not np.allclose(jax.tree.leaves(plain.state.params)[0], jax.tree.leaves(augmented.state.params)[0])


def test_flattened_images_shift_along_the_rows_the_data_recorded(ctx, tmp_path, monkeypatch):
    import jaxtrain.training.setup as loop
    from jaxtrain.data import load_dataset
    from jaxtrain.config.data import DataConfig

    rng = np.random.default_rng(5)
    np.savez(tmp_path / "img.npz", x=rng.normal(size=(40, 16, 4)), y=rng.integers(0, 2, 40))
    ds = load_dataset(DataConfig(source="npz", path=str(tmp_path / "img.npz"), val_fraction=0.0))
    # 64 features: a guess from the size alone would take these 16x4 images for 8x8 ones
    assert ds.feature_shape == (64,) and ds.image_shape == (16, 4)
    built, real = [], loop.make_augment
    monkeypatch.setattr(loop, "make_augment", lambda *a: built.append(real(*a)) or built[-1])
    cfg = load_config({"model": {"hidden_sizes": [8]}, "data": {"batch_size": 8},
                       "train": {"epochs": 1, "augment": {"shift": 2}, "steps_per_call": 1},
                       "parallel": {"data_axis_size": 1}, "checkpoint": {"enabled": False}})
    setup(cfg, MLP(64, (8,), 2, rngs=nnx.Rngs(0)), ds, ctx, plan=make_plan(cfg, ds))
    images = ds.train.x.reshape(-1, 16, 4, 1)
    got = np.asarray(built[0](jnp.asarray(ds.train.x), jnp.int32(0))).reshape(images.shape)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    moved = 0
    for b in range(len(images)):
        match = [s for s in shifts if np.array_equal(got[b], _numpy_shift(images[b], *s))]
        assert match, f"example {b} is not a shift of its 16x4 image"
        moved += match != [(0, 0)]
    assert moved > len(images) // 2


def test_configured_image_shape_wins_and_a_wrong_known_shape_is_named():
    assert image_shape((64,), (8, 8), (16, 4)) == (8, 8, 1)
    assert image_shape((64,), None, (16, 4)) == (16, 4, 1)
    with pytest.raises(ConfigError, match=r"the data's image shape \[5, 4, 1\] does not hold the 64 features"):
        image_shape((64,), None, (5, 4))
