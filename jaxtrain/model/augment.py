"""Image augmentation on the device, inside the train step: random shifts, small rotations, noise.

`make_augment(cfg, feature_shape, seed, known_image_shape)` returns an `Augment`,
`augment(x, step) -> x` (or None when every kind is off). The randomness comes from a key derived from `train.seed` with the
step number folded in, so it needs no state of its own: it is reproducible, and a
resumed run draws exactly what the uninterrupted one would have. Evaluation never
calls it (the Evaluator has its own compiled function).

Shifts move each image by whole pixels (up to `shift` on each axis) and fill the
uncovered border with the nearest edge pixel, which after normalization is the
background value for digit-like images; rotations turn each image about its center
by an angle up to `rotate` degrees, sampled bilinearly with the same edge fill;
noise adds N(0, noise^2) to the (normalized) inputs.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp

from jaxtrain.config.schema import AugmentConfig
from jaxtrain.model import images
from jaxtrain.util.errors import ConfigError

_STREAM = 0x61756721  # folded into the seed so augmentation draws differ from parameter init


def image_shape(feature_shape: tuple[int, ...], configured: tuple[int, ...] | None,
                known: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """(H, W, C) of the images behind `feature_shape`: from train.augment.image_shape, else the
    images the model input holds (images.image_shape: the shape the data stage recorded, or the
    feature shape itself when it has 2 or 3 dims)."""
    size = math.prod(feature_shape)
    if configured:
        shape, source = tuple(configured), "config key 'train.augment.image_shape': "
    else:
        shape = images.image_shape(feature_shape, known)
        if shape is None:
            raise ConfigError(f"config key 'train.augment': the {size} features of each example have no "
                              f"image shape (a table, or images the data did not record); set "
                              f"train.augment.image_shape to [height, width] or [height, width, channels]")
        source = "the data's image shape " if known else ""
    shape = images.with_channels(shape)
    if len(shape) != 3 or math.prod(shape) != size:
        raise ConfigError(f"{source}{list(shape)} does not hold the {size} features of each example; "
                          "set train.augment.image_shape to [height, width] or [height, width, channels]")
    return shape


def shift_images(images: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """Move image b by (dy[b], dx[b]) pixels (down, right); borders take the nearest edge pixel.
    images: (B, H, W, C)."""
    h, w = images.shape[1:3]
    rows = jnp.clip(jnp.arange(h)[None, :] - dy[:, None], 0, h - 1)
    cols = jnp.clip(jnp.arange(w)[None, :] - dx[:, None], 0, w - 1)
    return jax.vmap(lambda img, r, c: img[r][:, c])(images, rows, cols)


def rotate_images(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate image b by degrees[b] counterclockwise about its center (bilinear, edge fill)."""
    h, w = images.shape[1:3]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")

    def one(img, deg):
        t = jnp.deg2rad(deg)
        c, s = jnp.cos(t), jnp.sin(t)
        # Output pixel (i, j) reads the input where the inverse rotation takes it; rows grow
        # downwards, so this turns the picture counterclockwise as displayed (np.rot90 at 90).
        src_i = cy + c * (ii - cy) + s * (jj - cx)
        src_j = cx - s * (ii - cy) + c * (jj - cx)
        channel = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_i, src_j], order=1,  # noqa: E731
                                                               mode="nearest")
        return jax.vmap(channel, in_axes=2, out_axes=2)(img)

    return jax.vmap(one)(images, degrees)


class Augment:
    """The configured augmentation of `shape` images: `augment(x, step)` draws with the key of
    `step` (`key_at`); `with_key(x, key)` with any key (a pmap-style step folds its device in,
    engine/step.py)."""

    def __init__(self, cfg: AugmentConfig, shape: tuple[int, int, int], seed: int):
        self.cfg, self.shape = cfg, shape
        self.base = jax.random.fold_in(jax.random.key(seed), _STREAM)

    def key_at(self, step: jax.Array) -> jax.Array:
        return jax.random.fold_in(self.base, step)

    def __call__(self, x: jax.Array, step: jax.Array) -> jax.Array:
        return self.with_key(x, self.key_at(step))

    def with_key(self, x: jax.Array, key: jax.Array) -> jax.Array:
        cfg = self.cfg
        k_shift_y, k_shift_x, k_rot, k_noise = jax.random.split(key, 4)
        b = x.shape[0]
        images = x.reshape(b, *self.shape)
        if cfg.rotate:
            angles = jax.random.uniform(k_rot, (b,), minval=-cfg.rotate, maxval=cfg.rotate)
            images = rotate_images(images, angles).astype(x.dtype)
        if cfg.shift:
            dy = jax.random.randint(k_shift_y, (b,), -cfg.shift, cfg.shift + 1)
            dx = jax.random.randint(k_shift_x, (b,), -cfg.shift, cfg.shift + 1)
            images = shift_images(images, dy, dx)
        out = images.reshape(x.shape)
        if cfg.noise:
            out = out + cfg.noise * jax.random.normal(k_noise, x.shape, x.dtype)
        return out


def make_augment(cfg: AugmentConfig, feature_shape: tuple[int, ...], seed: int,
                 known_image_shape: tuple[int, ...] | None = None) -> Augment | None:
    """`known_image_shape`: the images' shape as the data stage recorded it (`Dataset.image_shape`);
    train.augment.image_shape, when set, takes precedence. None when every kind is off."""
    if not cfg:
        return None
    return Augment(cfg, image_shape(feature_shape, cfg.image_shape, known_image_shape), seed)
