"""Matplotlib figures for sweeps and reports, written as PNGs with the Agg backend.

Each function takes plain NumPy data and a path, draws one figure and closes it,
so callers never hold matplotlib state (and no display is ever needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxtrain.util.optional import require


def require_matplotlib() -> None:
    """Refuse in one line, before any work, when matplotlib (the `report` extra) is missing."""
    require("matplotlib", "report", "drawing charts (jaxtrain report, sweeps)")


def _plt():
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")  # files only: works on a headless machine
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def bar_per_point(names: Sequence[str], values: Sequence[float], metric: str, path: Path,
                  best: int | None = None) -> Path:
    """One horizontal bar per sweep point, the best one highlighted and every value written."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    colors = ["tab:green" if i == best else "tab:blue" for i in range(len(names))]
    ypos = np.arange(len(names))
    vals = np.asarray(values, np.float64)
    ax.barh(ypos, np.nan_to_num(vals), color=colors)
    ax.set_yticks(ypos, labels=names)
    ax.invert_yaxis()  # first point on top, as in results.csv
    for y, v in zip(ypos, vals):
        ax.text(v if np.isfinite(v) else 0, y, f" {v:.4g}", va="center")
    ax.set_xlabel(metric)
    ax.set_title(f"sweep: {metric} per point" + (" (best in green)" if best is not None else ""))
    ax.margins(x=0.15)
    return _save(fig, path)


SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange"}  # the same in every panel


def curves(history: dict[str, dict[str, list[tuple[int, float]]]], path: Path,
           titles: dict[str, str] | None = None, restored_epoch: int | None = None) -> Path:
    """One panel per metric (loss, accuracy, ...), two panels a row, a line per split (train,
    val) in each. `titles`: a panel's title when the metric's name alone hides its unit;
    `restored_epoch`: the epoch whose parameters early stopping restored, marked in every panel.
    A short run is drawn as points on whole-epoch ticks."""
    plt = _plt()
    metrics = [m for m in history if any(history[m].values())]
    cols = min(2, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    epochs = sorted({e for m in metrics for points in history[m].values() for e, _ in points})
    for ax, metric in zip(axes.flat, metrics):
        for split, points in history[metric].items():
            if points:
                x, y = zip(*points)
                few = len(x) < 30
                ax.plot(x, y, marker="o" if few else None, markersize=4 if few else 0,
                        linestyle="-" if len(x) > 1 else "none", label=split, color=SPLIT_COLORS.get(split))
        if restored_epoch is not None:
            ax.axvline(restored_epoch, color="tab:green", linestyle="--", lw=1,
                       label=f"restored (epoch {restored_epoch})")
        _epoch_axis(ax, epochs)
        ax.set_title((titles or {}).get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    return _save(fig, path)


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Epochs on x: every epoch ticked for a short run, whole epochs only for a long one."""
    ax.set_xlabel("epoch")
    if epochs and epochs[-1] - epochs[0] <= 10:
        ax.set_xticks(range(epochs[0], epochs[-1] + 1))
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def image_grid(images: np.ndarray, predicted: np.ndarray, true: np.ndarray, class_names: list[str],
               path: Path) -> Path:
    """Up to 5x5 images titled 'pred (true)'; mistakes get a red title and frame."""
    plt = _plt()
    fig, axes = plt.subplots(5, 5, figsize=(8, 8.8))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.axis("off")
            continue
        img = images[i]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ok = predicted[i] == true[i]
        color = "black" if ok else "red"
        ax.set_title(f"{class_names[predicted[i]]}" + ("" if ok else f" (true {class_names[true[i]]})"),
                     color=color, fontsize=10)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if ok else 3)
    wrong = int(np.sum(predicted[:len(images)] != true[:len(images)]))
    fig.suptitle(f"test images: predicted label ({wrong} mistakes in red, true label in brackets)")
    return _save(fig, path)


def confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> Path:
    plt = _plt()
    k = len(class_names)
    size = max(5.0, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), labels=class_names, rotation=45 if k > 10 else 0)
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        top = matrix.max() if matrix.size else 0
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if matrix[i, j] > top / 2 else "black")
    acc = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"confusion matrix (test, accuracy {acc:.3f})")
    return _save(fig, path)


def regression(actual: np.ndarray, predicted: np.ndarray, target: str, path: Path) -> Path:
    """Predicted against actual (with the y = x line) and residuals against predicted."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    a.scatter(actual, predicted, s=8, alpha=0.5)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    a.plot([lo, hi], [lo, hi], color="red", lw=1, label="perfect")
    a.set_xlabel(f"actual {target}")
    a.set_ylabel(f"predicted {target}")
    a.set_title("predicted vs actual (test)")
    a.legend()
    residual = actual - predicted
    b.scatter(predicted, residual, s=8, alpha=0.5)
    b.axhline(0, color="red", lw=1)
    b.set_xlabel(f"predicted {target}")
    b.set_ylabel("residual (actual - predicted)")
    b.set_title(f"residuals (test, mean {residual.mean():.3g}, std {residual.std():.3g})")
    return _save(fig, path)
