"""Classification metrics of an evaluation as pure functions on label arrays."""

from __future__ import annotations

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present in ``y_true``).

    Example:
        >>> classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))
        {'accuracy': 0.75, 'balanced_accuracy': 0.5}
    """
    recalls = class_recalls(y_true, y_pred, num_classes)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.nanmean(recalls)),
    }


def class_recalls(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """``(C,)`` recall of each class (``nan`` for a class absent from ``y_true``).

    ``C`` is ``num_classes``, or ``max(y_true) + 1`` without it.

    Example:
        >>> class_recalls(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3).tolist()
        [0.5, 1.0, nan]
    """
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    default = int(y_true.max()) + 1 if y_true.size else 0
    n = int(num_classes) if num_classes is not None else default
    out = np.full(n, np.nan)
    for c in range(n):
        mask = y_true == c
        if mask.any():
            out[c] = float((y_pred[mask] == c).mean())
    return out
