"""Segmentation metrics and prediction on the input's own voxel grid.

* :func:`predict_probabilities`: a 2D UNet over every slice of a prepared volume,
  ``(Z, C, H, W)`` softmax probabilities.
* :func:`segmentation_scores`: Dice and the 95th-percentile Hausdorff distance (HD95, in mm
  from the voxel spacing; in voxels when the header has none) of every structure, computed in 3D
  on the input's grid as the ACDC challenge does.

An empty structure: Dice is ``nan`` when it is absent from both maps (left out of means), ``0``
when only one map has it; HD95 is ``nan`` whenever either map lacks it (undefined).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medcl.metrics import dice_per_class
from medcl.models.unet import UNet
from medcl.pretrain.slices import PreparedVolume

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_probabilities(model: UNet, vol: PreparedVolume, *, batch_size: int = 32) -> np.ndarray:
    """Softmax class probabilities ``(Z, C, H, W)`` for every slice of ``vol``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, vol.depth, batch_size):
            x = torch.from_numpy(vol.image[start : start + batch_size][:, None]).to(device)
            out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


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


def summarise_scores(
    per_volume: Sequence[Mapping[str, Mapping[str, float]]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of Dice and HD95 per class over volumes, and their mean."""
    out: dict[str, dict[str, float]] = {}
    for name in [*names, "mean"]:
        row: dict[str, float] = {}
        for metric in ("dice", "hd95"):
            if name == "mean":
                vals = [
                    float(np.nanmean([v[n][metric] for n in names]))
                    for v in per_volume
                    if not all(math.isnan(v[n][metric]) for n in names)
                ]
            else:
                vals = [v[name][metric] for v in per_volume]
            arr = np.array([x for x in vals if math.isfinite(x)], dtype=np.float64)
            row[metric] = float(arr.mean()) if arr.size else math.nan
            row[f"{metric}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
            row[f"{metric}_n"] = float(arr.size)
        out[name] = row
    return out


def summary_table(summary: Mapping[str, Mapping[str, float]], hd_unit: str = "mm") -> str:
    """A markdown table: one row per structure (and the mean), Dice and HD95 mean +- std."""

    def cell(row: Mapping[str, float], metric: str, digits: int) -> str:
        mean, std = row[metric], row[f"{metric}_std"]
        if math.isnan(mean):
            return "n/a"
        text = f"{mean:.{digits}f}"
        if not math.isnan(std):
            text += f" +- {std:.{digits}f}"
        return text + f" (n={int(row[f'{metric}_n'])})"

    lines = [f"| structure | Dice | HD95 ({hd_unit}) |", "| --- | --- | --- |"]
    for name, row in summary.items():
        lines.append(f"| {name} | {cell(row, 'dice', 3)} | {cell(row, 'hd95', 1)} |")
    return "\n".join(lines) + "\n"
