"""``medcl mil train``: cross-validate a MIL aggregator on a manifest of bags and save each fold.

Layout: ``<workspace>/mil/<settings>/`` with ``config.yaml``, ``summary.json`` (per-fold and
mean/std metrics) and ``fold_<k>/`` holding ``model.pt``, ``metrics.json``, ``predictions.csv``
(``bag_id,label,score`` plus one ``prob_<class>`` column per class) and ``config.yaml``.
A re-run with the same settings reuses every finished fold (same config, same test bags).
``<settings>`` encodes the manifest, aggregator, folds and seed, TRIDENT-style.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from medcl.config import config_to_dict, save_config
from medcl.errors import InvalidInputError
from medcl.mil.checkpoint import load_mil_model, save_mil_model
from medcl.mil.data import Bag, bags_from_manifest
from medcl.mil.folds import CVResult, FoldResult, cross_validate, split_validation, summarise
from medcl.mil.predict import mil_metrics, predict_bags
from medcl.mil.train import FitResult, MILTrainConfig, fit_mil
from medcl.workspace import job_dir, settings_name, slug

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("auc", "balanced_accuracy", "instance_auc", "best_epoch")


@dataclass
class MILRunResult:
    """Where the run wrote its outputs, its cross-validation result and the summary table."""

    out_dir: Path
    cv: CVResult
    class_names: list[str]
    table: str


def run_name(manifest: Path, cfg: MILTrainConfig) -> str:
    """``<manifest-stem>_<aggregator>_<k>fold_seed<s>``."""
    return settings_name(
        {"": slug(manifest.stem, 40), "agg": cfg.aggregator, "folds": cfg.folds, "seed": cfg.seed}
    ).lstrip("_")


def write_fold(
    fold_dir: Path,
    result: FoldResult,
    test: Sequence[Bag],
    cfg: MILTrainConfig,
    class_names: Sequence[str],
) -> None:
    """Write one fold's ``model.pt``, ``metrics.json``, ``predictions.csv`` and ``config.yaml``."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_mil_model(fold_dir / "model.pt", result.fit.model, cfg, class_names)
    report: dict[str, Any] = {
        "fold": result.fold,
        "metrics": {k: (None if math.isnan(v) else v) for k, v in result.metrics.items()},
        "train_bags": result.train_ids,
        "val_bags": result.val_ids,
        "test_bags": result.test_ids,
        "history": result.fit.history,
    }
    (fold_dir / "metrics.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    preds = result.predictions
    with (fold_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["bag_id", "label", "score", *(f"prob_{c}" for c in class_names)])
        for i, bag in enumerate(test):
            probs = [f"{p:.6f}" for p in preds.bag_probs[i]]
            writer.writerow(
                [bag.bag_id, class_names[bag.label], f"{preds.bag_scores[i]:.6f}", *probs]
            )
    save_config(cfg, fold_dir)


def load_finished_fold(
    fold_dir: Path, cfg: MILTrainConfig, test_ids: Sequence[str]
) -> FitResult | None:
    """The saved fit of a finished fold, or ``None`` when it must be (re)trained.

    A fold is finished when its ``model.pt`` and ``metrics.json`` exist, it was trained with the
    same config (``config.yaml``) and tested on the same bags.
    """
    model_path, report_path = fold_dir / "model.pt", fold_dir / "metrics.json"
    if not (
        model_path.is_file() and report_path.is_file() and (fold_dir / "config.yaml").is_file()
    ):
        return None
    try:
        saved = yaml.safe_load((fold_dir / "config.yaml").read_text(encoding="utf-8"))
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    same_cfg = saved == config_to_dict(cfg)
    if not same_cfg or sorted(report.get("test_bags", [])) != sorted(test_ids):
        return None
    model, _ = load_mil_model(model_path)
    best = int(report.get("metrics", {}).get("best_epoch") or 0)
    log.info("fold %s already trained; reusing %s", fold_dir.name, model_path)
    return FitResult(model, list(report.get("history", [])), best)


def _single_split(bags: Sequence[Bag], cfg: MILTrainConfig, n_classes: int) -> FoldResult:
    """``folds=1``: train on all bags but a patient-grouped validation part, test on that part."""
    train, val = split_validation(bags, cfg.val_fraction or 0.2, cfg.seed)
    if not val:
        raise InvalidInputError("manifest", "one fold needs bags of at least two patients")
    fit = fit_mil(train, val, cfg, n_classes=n_classes)
    preds = predict_bags(fit.model, val, cfg.batch_size)
    metrics = {**mil_metrics(val, preds), "best_epoch": float(fit.best_epoch)}
    ids = [b.bag_id for b in val]
    return FoldResult(0, [b.bag_id for b in train], ids, ids, fit, preds, metrics)


def format_table(cv: CVResult) -> str:
    """A plain-text table: one row per fold, then mean ± std."""

    def cell(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.3f}"

    header = f"{'fold':>6} {'test':>5} " + " ".join(f"{c:>17}" for c in METRIC_COLUMNS)
    lines = [header]
    for r in cv.folds:
        values = " ".join(f"{cell(r.metrics.get(c, math.nan)):>17}" for c in METRIC_COLUMNS)
        lines.append(f"{r.fold:>6} {len(r.test_ids):>5} {values}")
    summary = " ".join(
        f"{cell(cv.mean.get(c, math.nan)) + ' ± ' + cell(cv.std.get(c, math.nan)):>17}"
        for c in METRIC_COLUMNS
    )
    lines.append(f"{'mean':>6} {'':>5} {summary}")
    return "\n".join(lines)


def run_mil_train(
    manifest: str | PathLike[str],
    cfg: MILTrainConfig,
    *,
    workspace: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> MILRunResult:
    """Load the manifest's bags, cross-validate (``cfg.folds``) and write every fold.

    Raises:
        InvalidInputError: a bad manifest or bag file, or too few patients for the folds.
    """
    path = Path(manifest)
    bags, class_names = bags_from_manifest(path, cfg.class_names)
    n_classes = len(class_names)
    if n_classes < 2:
        raise InvalidInputError(path, f"needs at least two classes, found {class_names}")
    dims = {b.features.shape[1] for b in bags}
    if len(dims) != 1:
        raise InvalidInputError(path, f"bags have different feature sizes {sorted(dims)}")
    out = job_dir(out_dir, workspace, "mil", run_name(path, cfg))
    save_config(cfg, out)
    log.info("%d bags, classes %s, writing to %s", len(bags), class_names, out)

    def on_fold(result: FoldResult, test: Sequence[Bag]) -> None:
        write_fold(out / f"fold_{result.fold}", result, test, cfg, class_names)

    def load_fold(k: int, test: Sequence[Bag]) -> FitResult | None:
        return load_finished_fold(out / f"fold_{k}", cfg, [b.bag_id for b in test])

    if cfg.folds == 1:
        single = _single_split(bags, cfg, n_classes)
        on_fold(single, [b for b in bags if b.bag_id in set(single.test_ids)])
        mean, std = summarise([single.metrics])
        cv = CVResult([single], mean, std)
    else:
        n_patients = len({b.patient for b in bags})
        if n_patients < cfg.folds:
            raise InvalidInputError(
                path, f"{cfg.folds} folds need at least {cfg.folds} patients, found {n_patients}"
            )
        cv = cross_validate(
            bags, cfg, cfg.folds, cfg.seed, n_classes=n_classes, on_fold=on_fold,
            load_fold=load_fold,
        )  # fmt: skip
    summary = {
        "class_names": class_names,
        "mean": cv.mean,
        "std": cv.std,
        "folds": [{"fold": r.fold, **r.metrics} for r in cv.folds],
    }
    text = json.dumps(summary, indent=1).replace("NaN", "null")
    (out / "summary.json").write_text(text, encoding="utf-8")
    return MILRunResult(out, cv, class_names, format_table(cv))
