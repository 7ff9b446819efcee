"""Evaluation metrics as pure functions on arrays."""

from __future__ import annotations

import numpy as np


def dice_per_class(
    pred: np.ndarray, target: np.ndarray, num_classes: int, *, mask: np.ndarray | None = None
) -> np.ndarray:
    """Dice of every foreground class ``1..num_classes-1``.

    Args:
        pred, target: integer class maps of the same shape.
        num_classes: classes including background 0.
        mask: optional boolean array of the same shape; only voxels inside count.

    Returns:
        ``(num_classes - 1,)`` float array; ``nan`` for a class absent from both maps.

    Example:
        >>> dice_per_class(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3).tolist()
        [0.6666666666666666, 0.6666666666666666]
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    p = np.asarray(pred).ravel()
    t = np.asarray(target).ravel()
    if mask is not None:
        keep = np.asarray(mask, dtype=bool).ravel()
        p, t = p[keep], t[keep]
    out = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        denom = int(pc.sum()) + int(tc.sum())
        if denom:
            out[c - 1] = 2.0 * int((pc & tc).sum()) / denom
    return out
