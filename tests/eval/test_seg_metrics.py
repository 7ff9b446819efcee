"""Dice / HD95 on hand-made masks and the 95% intervals of the README tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medcl.eval.seg import summarise_scores
from medcl.eval.tables import mean_interval, paired_interval, t_interval
from medcl.metrics import hd95, segmentation_scores


def test_hd95_of_shifted_boxes_is_the_shift_in_mm() -> None:
    a = np.zeros((20, 20, 4), bool)
    b = np.zeros((20, 20, 4), bool)
    a[5:10, 5:10, :] = True
    b[8:13, 5:10, :] = True  # moved 3 voxels along x
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, b, (2.0, 1.0, 5.0)) == pytest.approx(6.0)
    assert math.isnan(hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


def test_scores_per_structure() -> None:
    target = np.zeros((10, 10, 2), np.int64)
    pred = np.zeros_like(target)
    target[2:6, 2:6] = 1
    pred[2:6, 2:6] = 1
    pred[8, 8] = 2  # a structure only the prediction has
    scores = segmentation_scores(pred, target, {"lv": 3, "rv": 1}, (1.0, 1.0, 1.0))
    assert scores["lv"] == {"dice": 1.0, "hd95": 0.0}
    assert scores["rv"]["dice"] == 0.0 and math.isnan(scores["rv"]["hd95"])
    summary = summarise_scores([scores, scores], ["lv", "rv"])
    assert summary["lv"]["dice"] == 1.0 and summary["mean"]["dice"] == 0.5
    assert summary["rv"]["hd95_n"] == 0


def test_t_interval_matches_scipy() -> None:
    from scipy import stats

    values = [0.61, 0.66, 0.70]
    mean, low, high = t_interval(values)
    ref = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (low, high) == pytest.approx(ref)
    assert mean == pytest.approx(np.mean(values))
    assert mean_interval([0.5]) == "0.500 [0.500, 0.500] (n=1)"
    assert paired_interval([0.05, 0.06, 0.07]).endswith("above 0")
    assert not paired_interval([0.05, -0.06, 0.07]).endswith("0")
