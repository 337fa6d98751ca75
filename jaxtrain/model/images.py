"""Which images are behind a model's input: one answer for the CNN and for augmentation."""

from __future__ import annotations


def image_shape(feature_shape: tuple[int, ...], known: tuple[int, ...] | None = None
                ) -> tuple[int, ...] | None:
    """The (H, W[, C]) of the images behind examples of `feature_shape`: the shape the data stage
    recorded for flattened images (`known`: `Dataset.image_shape`), else the feature shape itself
    when it has 2 or 3 dims; None for flat features without a recorded shape (a table: a guess
    from the size alone would take 16x4 images for 8x8 ones). The callers check it holds the
    features, and say what is wrong in their own words."""
    if known:
        return tuple(known)
    return tuple(feature_shape) if len(feature_shape) in (2, 3) else None


def with_channels(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(H, W) -> (H, W, 1); (H, W, C) unchanged."""
    return (*shape, 1) if len(shape) == 2 else tuple(shape)
