"""Folders of images for the tests of data.source=images, written from arrays the test holds."""

from pathlib import Path

import numpy as np
from PIL import Image

from jaxtrain.data.sources import builtin_table


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, names: list[str] | None = None,
                 suffix: str = ".png", **save) -> list[Path]:
    """Image i into root/<class name>/<i>.png; `names` sorted (label k is names[k]), default str(k).
    Within a class the files are in index order, so the folder lists the images in
    `np.argsort(y, kind="stable")` order."""
    paths = []
    for i in range(len(x)):
        folder = Path(root) / (names[y[i]] if names else str(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{i:05d}{suffix}")
        Image.fromarray(x[i]).save(paths[-1], **save)
    return paths


def folder_order(y: np.ndarray) -> np.ndarray:
    return np.argsort(y, kind="stable")


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits shipped with jaxtrain, as uint8 pixels 0..240."""
    table = builtin_table("digits")
    return (table["x"] * 15).astype(np.uint8).reshape(-1, 8, 8), table["y"].astype(np.int64)
