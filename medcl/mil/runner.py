"""``medcl mil train``: cross-validate a MIL aggregator on a manifest of bags and save each fold.

Layout: ``<workspace>/mil/<settings>/`` with ``config.yaml``, ``summary.json`` (per-fold and
mean/std metrics) and ``fold_<k>/`` holding ``model.pt``, ``metrics.json``, ``predictions.csv``
(``bag_id,label,score`` plus one ``prob_<class>`` column per class) and ``config.yaml``.
A re-run with the same settings reuses every finished fold (same config, same test bags) and
resumes an unfinished one from its step checkpoints (``fold_<k>/train/``); a re-run into a
folder whose ``config.yaml`` holds other settings is refused (the differing keys are named).
``<settings>`` encodes the manifest, aggregator, folds and seed, TRIDENT-style.

Under ``torchrun`` (e.g. ``torchrun --nproc_per_node=2 -m medcl mil train ...``) the bag
aggregators train each fold with DDP on the shared engine (:mod:`medcl.mil.engine_fit`); ``ins``
keeps a confidence per training instance and a queue that one process owns, so its folds are
shared out over the processes instead (fold ``k`` on rank ``k mod world``, which writes it) and
rank 0 then reads them all back. Rank 0 writes the run's ``config.yaml`` and ``summary.json`` and
the folds of the DDP aggregators; the other processes write nothing.
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
from medcl.engine.distributed import DistInfo, barrier, cleanup, init_distributed
from medcl.errors import InvalidInputError
from medcl.mil.checkpoint import load_mil_model, save_mil_model
from medcl.mil.data import Bag, bags_from_manifest
from medcl.mil.engine_fit import fit_mil_engine
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


def check_run_config(out: Path, cfg: MILTrainConfig) -> None:
    """Refuse to continue a run folder whose ``config.yaml`` holds other settings.

    Raises:
        InvalidInputError: naming the folder's config and the keys that differ.
    """
    path = out / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InvalidInputError(path, "not a readable config; remove the folder") from None
    current = config_to_dict(cfg)
    if not isinstance(saved, dict):
        raise InvalidInputError(path, "not a config mapping; remove the folder")
    differ = sorted(k for k in {*saved, *current} if saved.get(k) != current.get(k))
    if differ:
        raise InvalidInputError(
            path,
            f"this run folder was trained with other settings (differs in: {', '.join(differ)}); "
            "choose another --out or remove the folder",
        )


def check_fold_count(
    path: Path, bags: Sequence[Bag], class_names: Sequence[str], folds: int
) -> None:
    """Refuse more folds than patients, overall or of any class (a fold would miss the class).

    Raises:
        InvalidInputError: naming the manifest, the fold count and the short class.
    """
    n_patients = len({b.patient for b in bags})
    if n_patients < folds:
        raise InvalidInputError(
            path, f"{folds} folds need at least {folds} patients, found {n_patients}"
        )
    for c, name in enumerate(class_names):
        n = len({b.patient for b in bags if b.label == c})
        if n < folds:
            raise InvalidInputError(
                path,
                f"{folds} folds need at least {folds} patients of every class; "
                f"class '{name}' has {n}",
            )


def _is_ins(cfg: MILTrainConfig) -> bool:
    return cfg.aggregator == "ins"


def _fit(cfg: MILTrainConfig, n_classes: int, info: DistInfo, fold_dir: Path) -> Any:
    """The fold trainer: the engine for bag aggregators, :func:`fit_mil` for ``ins``."""

    def fit(k: int, train: Sequence[Bag], val: Sequence[Bag]) -> FitResult | None:
        if _is_ins(cfg):
            if info.world_size > 1 and k % info.world_size != info.rank:
                return None  # another process trains this fold
            return fit_mil(train, val or None, cfg, n_classes=n_classes)
        return fit_mil_engine(
            train, val or None, cfg, n_classes=n_classes, out_dir=fold_dir / f"fold_{k}" / "train",
            info=info,
        )  # fmt: skip

    return fit


def _single_split(
    bags: Sequence[Bag], cfg: MILTrainConfig, n_classes: int, fit_fold: Any
) -> FoldResult:
    """``folds=1``: train on all bags but a patient-grouped validation part, test on that part."""
    train, val = split_validation(bags, cfg.val_fraction or 0.2, cfg.seed)
    if not val:
        raise InvalidInputError("manifest", "one fold needs bags of at least two patients")
    fit = fit_fold(0, train, val)
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

    Runs in one process or under ``torchrun`` (see the module doc); resumes a killed run.

    Raises:
        InvalidInputError: a bad manifest or bag file, too few patients for the folds, or a run
            folder trained with other settings.
    """
    info = init_distributed(cfg.device)
    try:
        return _run(Path(manifest), cfg, info, workspace, out_dir)
    finally:
        cleanup()


def _run(
    path: Path,
    cfg: MILTrainConfig,
    info: DistInfo,
    workspace: str | Path | None,
    out_dir: str | Path | None,
) -> MILRunResult:
    bags, class_names = bags_from_manifest(path, cfg.class_names)
    n_classes = len(class_names)
    if n_classes < 2:
        raise InvalidInputError(path, f"needs at least two classes, found {class_names}")
    dims = {b.features.shape[1] for b in bags}
    if len(dims) != 1:
        raise InvalidInputError(path, f"bags have different feature sizes {sorted(dims)}")
    out = job_dir(out_dir, workspace, "mil", run_name(path, cfg))
    check_run_config(out, cfg)
    barrier()  # every process has compared the config before rank 0 writes it
    if info.is_main:
        save_config(cfg, out)
    log.info("%d bags, classes %s, writing to %s", len(bags), class_names, out)
    fit_fold = _fit(cfg, n_classes, info, out)
    ins_shared = _is_ins(cfg) and info.world_size > 1

    def on_fold(result: FoldResult, test: Sequence[Bag]) -> None:
        if info.is_main or ins_shared:  # an ins fold is written by the process that trained it
            write_fold(out / f"fold_{result.fold}", result, test, cfg, class_names)

    def load_fold(k: int, test: Sequence[Bag]) -> FitResult | None:
        return load_finished_fold(out / f"fold_{k}", cfg, [b.bag_id for b in test])

    if cfg.folds == 1:
        ins_waits = _is_ins(cfg) and not info.is_main  # rank 0 trains the one ins fold
        if not ins_waits:
            single = _single_split(bags, cfg, n_classes, fit_fold)
            if info.is_main:
                on_fold(single, [b for b in bags if b.bag_id in set(single.test_ids)])
        barrier()
        if ins_waits:
            single = _single_split(bags, cfg, n_classes, lambda k, t, v: _loaded(out, cfg, v))
        mean, std = summarise([single.metrics])
        cv = CVResult([single], mean, std)
    else:
        check_fold_count(path, bags, class_names, cfg.folds)
        cv = cross_validate(
            bags, cfg, cfg.folds, cfg.seed, n_classes=n_classes, on_fold=on_fold,
            load_fold=load_fold, fit_fold=fit_fold,
        )  # fmt: skip
        if ins_shared:  # every fold is on disk now: read them all back
            barrier()
            cv = cross_validate(
                bags, cfg, cfg.folds, cfg.seed, n_classes=n_classes, load_fold=load_fold,
                fit_fold=lambda k, t, v: None,
            )  # fmt: skip
    summary = {
        "class_names": class_names,
        "mean": cv.mean,
        "std": cv.std,
        "folds": [{"fold": r.fold, **r.metrics} for r in cv.folds],
    }
    if info.is_main:
        text = json.dumps(summary, indent=1).replace("NaN", "null")
        (out / "summary.json").write_text(text, encoding="utf-8")
    barrier()
    return MILRunResult(out, cv, class_names, format_table(cv))


def _loaded(out: Path, cfg: MILTrainConfig, val: Sequence[Bag]) -> FitResult:
    fit = load_finished_fold(out / "fold_0", cfg, [b.bag_id for b in val])
    if fit is None:
        raise InvalidInputError(out / "fold_0", "rank 0 did not write the fold")
    return fit
