"""Segmentation summaries of an evaluation: Dice and HD95 per structure over volumes, as tables.

The per-volume scores come from :func:`medcl.metrics.segmentation_scores` (shared with the
fine-tuning job, which scores its own test volumes) on predictions of
:func:`medcl.pretrain.predict.predict_probabilities`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


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
