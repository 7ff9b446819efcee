"""Segmentation metrics as pure functions on arrays: Dice, HD95 and both per structure.

Shared by the fine-tuning job (its test volumes), ``medcl eval seg`` and the review viewer.
An empty structure: Dice is ``nan`` when it is absent from both maps (left out of means), ``0``
when only one map has it; HD95 is ``nan`` whenever either map lacks it (undefined).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 between two boolean masks of one shape, in the units of ``spacing``.

    The symmetric 95th percentile of surface-to-surface distances (MONAI's
    ``compute_hausdorff_distance`` with ``percentile=95``); ``nan`` if either mask is empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    if not pred.any() or not target.any():
        return math.nan
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None, None]
    with warnings.catch_warnings():  # MONAI deprecation notices about its own internals
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


def segmentation_scores(
    pred: np.ndarray,
    target: np.ndarray,
    classes: Mapping[str, int],
    spacing: Sequence[float],
    *,
    mask: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """``{class name: {"dice", "hd95"}}`` for class-index maps (class ``i + 1`` = i-th name).

    Args:
        pred, target: integer class-index maps ``(X, Y, Z)`` (0 background).
        classes: class names in index order (values unused here).
        spacing: voxel size per axis (mm), for HD95.
        mask: optional voxels to score (Dice only; HD95 uses whole slices the mask keeps).
    """
    names = list(classes)
    dice = dice_per_class(pred, target, len(names) + 1, mask=mask)
    p, t = pred, target
    if mask is not None:
        p = np.where(mask, pred, 0)
        t = np.where(mask, target, 0)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names, start=1):
        out[name] = {"dice": float(dice[i - 1]), "hd95": hd95(p == i, t == i, spacing)}
    return out
