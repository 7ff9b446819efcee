"""Patient-grouped, label-stratified cross-validation of MIL models.

Folds come from :func:`medcl.io.splits.group_kfold` on the bags' ``patient`` field: every patient
is tested in exactly one fold and never appears on both sides of a fold. Inside each fold a
patient-grouped validation part (``cfg.val_fraction``) is held out of the training bags for early
stopping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medcl.io.splits import group_kfold, group_split
from medcl.mil.data import Bag, infer_n_classes
from medcl.mil.predict import BagPredictions, mil_metrics, predict_bags

if TYPE_CHECKING:
    from medcl.mil.train import FitResult, MILTrainConfig

log = logging.getLogger(__name__)


def patient_folds(
    bags: Sequence[Bag], n_folds: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` pairs of (train, test) bag indices, grouped by patient, stratified by label.

    Raises:
        ValueError: fewer patients than folds, or ``n_folds < 2``.
    """
    patients = [b.patient for b in bags]
    labels = [b.label for b in bags]
    return group_kfold(patients, labels, k=n_folds, seed=seed)


def split_validation(
    bags: Sequence[Bag], fraction: float, seed: int = 0
) -> tuple[list[Bag], list[Bag]]:
    """Hold out about ``fraction`` of ``bags`` (whole patients, stratified) for validation.

    Returns ``(train, val)``; ``val`` is empty when ``fraction`` is 0 or there are fewer than two
    patients.
    """
    if fraction <= 0 or len({b.patient for b in bags}) < 2:
        return list(bags), []
    parts = group_split(
        [b.patient for b in bags], [b.label for b in bags], test_size=0.0, val_size=fraction,
        seed=seed,
    )  # fmt: skip
    train = [bags[i] for i in parts["train"]]
    val = [bags[i] for i in parts["val"]]
    if not train:
        return list(bags), []
    return train, val


@dataclass
class FoldResult:
    """One fold: the bag ids of each part, the fitted model, test predictions and metrics."""

    fold: int
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    fit: FitResult
    predictions: BagPredictions
    metrics: dict[str, float]


@dataclass
class CVResult:
    """Every fold's result and the mean / standard deviation of each metric over folds."""

    folds: list[FoldResult]
    mean: dict[str, float]
    std: dict[str, float]


def summarise(metrics: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and (population) standard deviation of each metric, ignoring NaN folds."""
    keys = sorted({k for m in metrics for k in m})
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key in keys:
        values = np.array([m.get(key, math.nan) for m in metrics], dtype=float)
        values = values[~np.isnan(values)]
        mean[key] = float(values.mean()) if len(values) else math.nan
        std[key] = float(values.std()) if len(values) else math.nan
    return mean, std


def cross_validate(
    bags: Sequence[Bag],
    cfg: MILTrainConfig,
    n_folds: int = 5,
    seed: int = 0,
    *,
    n_classes: int | None = None,
    on_fold: Callable[[FoldResult, Sequence[Bag]], None] | None = None,
    load_fold: Callable[[int, Sequence[Bag]], FitResult | None] | None = None,
    fit_fold: Callable[[int, Sequence[Bag], Sequence[Bag]], FitResult | None] | None = None,
) -> CVResult:
    """Train and test ``cfg.aggregator`` on ``n_folds`` patient-grouped folds.

    Args:
        bags: every bag, with labels and patients.
        cfg: the training config (its ``val_fraction`` sets the early-stopping split).
        n_folds: folds (2 .. number of patients).
        seed: seed of the fold assignment (training uses ``cfg.seed``).
        n_classes: classes (default: as in :func:`medcl.mil.train.fit_mil`).
        on_fold: called with each fold's result and its test bags as soon as it is trained.
        load_fold: resume hook: returns the finished fit of fold ``k`` (given its test bags), or
            ``None`` to train it; a loaded fold is scored again but not passed to ``on_fold``.
        fit_fold: trains fold ``k`` from its train and validation bags (default
            :func:`~medcl.mil.train.fit_mil`); returning ``None`` leaves the fold out of the
            result (another process trains it).

    Returns:
        Per-fold results with the mean and std of the test metrics.
    """
    from medcl.mil.train import fit_mil

    if n_classes is None:
        n_classes = infer_n_classes(bags, cfg.class_names)
    results: list[FoldResult] = []
    for k, (train_idx, test_idx) in enumerate(patient_folds(bags, n_folds, seed)):
        train_all = [bags[i] for i in train_idx]
        test = [bags[i] for i in test_idx]
        train, val = split_validation(train_all, cfg.val_fraction, seed + k)
        log.info("fold %d: %d train, %d val, %d test bags", k, len(train), len(val), len(test))
        loaded = load_fold(k, test) if load_fold is not None else None
        if loaded is not None:
            fit: FitResult | None = loaded
        elif fit_fold is not None:
            fit = fit_fold(k, train, val)
        else:
            fit = fit_mil(train, val or None, cfg, n_classes=n_classes)
        if fit is None:
            continue
        preds = predict_bags(fit.model, test, cfg.batch_size)
        metrics = mil_metrics(test, preds)
        metrics["best_epoch"] = float(fit.best_epoch)
        result = FoldResult(
            k,
            [b.bag_id for b in train],
            [b.bag_id for b in val],
            [b.bag_id for b in test],
            fit,
            preds,
            metrics,
        )
        if on_fold is not None and loaded is None:
            on_fold(result, test)
        results.append(result)
    mean, std = summarise([r.metrics for r in results])
    return CVResult(results, mean, std)
