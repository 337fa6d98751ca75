"""Evaluation metrics computed on the host in float64 from the model's outputs.

Evaluation runs once per epoch, so one transfer of the outputs is cheap, and
float64 on the host keeps R^2 and MSE exact in original units (house prices
run to 500000, whose squares lose digits in float32).
"""

from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    return {"loss": float(loss), "accuracy": float((logits.argmax(1) == y).mean())}


def regression_metrics(pred: np.ndarray, y: np.ndarray, mean: float = 0.0, scale: float = 1.0
                       ) -> dict[str, float]:
    """`pred`, `y` standardized; `loss` in training units, mse/mae/r2 in original units."""
    pred = pred.astype(np.float64).reshape(y.shape)
    y = y.astype(np.float64)
    loss = float(np.mean(np.square(pred - y)))
    pred_o, y_o = pred * scale + mean, y * scale + mean
    err = pred_o - y_o
    sst = np.sum(np.square(y_o - y_o.mean()))
    return {"loss": loss, "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
            "r2": float(1.0 - np.sum(err ** 2) / sst) if sst > 0 else float("nan")}


def compute_metrics(task: str, outputs: np.ndarray, y: np.ndarray, mean: float = 0.0,
                    scale: float = 1.0) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(outputs, y)
    return regression_metrics(outputs, y, mean, scale)
