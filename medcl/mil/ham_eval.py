"""``medcl eval mil-ham``: a MIL benchmark from real images with known instance labels.

HAM10000 dermoscopy images become instances: a bag of 20-100 images is positive iff it holds at
least one melanoma, and positive bags hold few of them (witness rate 5-20%), like a slide with a
small tumour. Lesions are split into train / val / test first (no lesion in two splits), bags are
drawn inside each split (:mod:`medcl.mil.ham_bags`). For each encoder of ``encoders`` every image
is embedded once (frozen; cached; :mod:`medcl.mil.ham_features`), then for each seed every row
is trained on the train bags and scored on the test bags:

* aggregators (``mean``, ``max``, ``abmil``, ``transmil``, ``ins``) on the frozen features;
* ``ins_e2e``: INS with a trainable image encoder on ``e2e.image_size`` px images
  (:mod:`medcl.mil.ins_e2e`; the schedule of ``e2e``);
* ``oracle``: a logistic regression trained on the *true instance labels* of the train bags'
  images, its regularisation chosen on the validation bags' instance labels (the ceiling of a
  linear instance scorer on these features), bags scored by the mean.

Metrics: bag AUC, instance AUC (attention for ABMIL / TransMIL, instance probabilities
otherwise) and bag balanced accuracy at the threshold that maximises it on the validation bags.
Rows train with their own selection rule: early stopping on validation AUC for the bag
aggregators, the fixed schedule (last epoch) for INS. The table gives the mean over seeds with a
95% t-interval. INS's per-epoch history (losses, pseudo-label accuracy against the true instance
labels, validation AUCs) is kept in ``curves/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.eval.tables import update_readme
from medcl.io.image_selection import PatchDataConfig
from medcl.mil.data import Bag
from medcl.mil.ham_features import embed_images, small_images
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir, settings_hash, slug

log = logging.getLogger(__name__)

MARKERS = ("<!-- mil-ham:start -->", "<!-- mil-ham:end -->")
ROWS = ("mean", "max", "abmil", "transmil", "ins", "ins_e2e", "oracle")


class BagOptions(StrictModel):
    """How many bags of which sizes and witness rates."""

    n_train: int = Field(default=300, ge=2)
    n_val: int = Field(default=80, ge=2)
    n_test: int = Field(default=150, ge=2)
    bag_size: tuple[int, int] = (20, 100)
    witness_rate: tuple[float, float] = (0.05, 0.20)
    positive_fraction: float = Field(default=0.5, gt=0, lt=1)
    val_size: float = Field(default=0.2, gt=0, lt=1)
    test_size: float = Field(default=0.2, gt=0, lt=1)


class E2EOptions(StrictModel):
    """INS end to end: the image encoder and its input size (the INS schedule: ``ins``)."""

    encoder: str = "offline:efficientnet_lite0-imagenet"
    image_size: int = Field(default=32, ge=8)
    ins: dict[str, object] = Field(default_factory=dict, description="INSOptions overrides")


class MILHamEvalConfig(StrictModel):
    """The HAM10000 MIL benchmark."""

    name: str = "mil_ham"
    data: PatchDataConfig = Field(
        default_factory=lambda: PatchDataConfig(path=Path("ham10000"), format="ham10000")
    )
    encoders: list[str] = Field(default_factory=lambda: ["timm:resnet18"])
    image_size: int = Field(default=96, ge=16)
    batch_size: int = Field(default=128, ge=1)
    positive_class: str = "mel"
    bags: BagOptions = Field(default_factory=BagOptions)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    rows: list[str] = Field(default_factory=lambda: list(ROWS))
    train: dict[str, object] = Field(
        default_factory=dict, description="MILTrainConfig fields shared by every aggregator"
    )
    train_per_aggregator: dict[str, dict[str, object]] = Field(default_factory=dict)
    e2e: E2EOptions = Field(default_factory=E2EOptions)
    report_only: bool = Field(
        default=False,
        description="write the table from the rows already in results.csv; train nothing",
    )
    out_dir: Path | None = None


@dataclass(frozen=True)
class MILRow:
    """One row (aggregator) on one encoder's features and one seed, on the test bags."""

    encoder: str
    row: str
    seed: int
    bag_auc: float
    instance_auc: float
    bag_balanced_accuracy: float
    threshold: float
    best_epoch: int
    settings: str = ""  # row_settings() of the run; a cached row with other settings is re-run


#: bumped when medcl changes what a row computes, so its cached results count as stale (a row
#: not named here is at version 1; oracle 2: C chosen on the validation bags' instances)
ROW_VERSIONS: dict[str, int] = {"oracle": 2}


def row_settings(cfg: MILHamEvalConfig, encoder: str, row: str) -> str:
    """A digest of everything that changes a row's result: bags, data, the encoder (and a
    ``medcl:`` checkpoint's SHA-256), the row's training options and its version."""
    from medcl.mil.ham_features import encoder_digest
    from medcl.mil.ins_train import INSOptions
    from medcl.mil.train import MILTrainConfig

    payload: dict[str, object] = {
        "row": row,
        "version": ROW_VERSIONS.get(row, 1),
        "data": cfg.data.model_dump(mode="json", exclude={"num_workers"}),
        "positive_class": cfg.positive_class,
        "bags": cfg.bags.model_dump(mode="json"),
    }
    if row == "ins_e2e":
        payload["e2e"] = cfg.e2e.model_dump(mode="json")
        payload["ins"] = INSOptions.model_validate(cfg.e2e.ins).model_dump(mode="json")
    else:
        payload.update(encoder=encoder, weights=encoder_digest(encoder), size=cfg.image_size)
    if row not in ("oracle", "ins_e2e"):
        options = {**cfg.train, **cfg.train_per_aggregator.get(row, {}), "aggregator": row}
        train = MILTrainConfig.model_validate(options).model_dump(mode="json")
        drop = {"progress", "device"} | ({"ins"} if row != "ins" else set())
        payload["train"] = {k: v for k, v in train.items() if k not in drop}
    return settings_hash(payload)


def threshold_from_val(labels: np.ndarray, scores: np.ndarray) -> float:
    """The bag-score threshold with the highest balanced accuracy on validation bags.

    Candidates are the midpoints between consecutive distinct scores (and both ends); ties keep
    the lowest. Binary labels.
    """
    from sklearn.metrics import balanced_accuracy_score

    values = np.unique(np.asarray(scores, dtype=np.float64))
    cands = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2, [values[-1]]])
    best, best_t = -1.0, 0.5
    for t in cands:
        acc = balanced_accuracy_score(labels, (scores >= t).astype(np.int64))
        if acc > best + 1e-12:
            best, best_t = acc, float(t)
    return best_t


def row_encoder(cfg: MILHamEvalConfig, encoder: str, row: str) -> str:
    """The features a row ran on: the frozen encoder, or INS e2e's own trained encoder."""
    if row == "ins_e2e":
        return f"{cfg.e2e.encoder} trained at {cfg.e2e.image_size} px"
    return encoder


def _score(
    val: list[Bag], test: list[Bag], val_scores: np.ndarray, test_scores: np.ndarray,
    test_instance: list[np.ndarray],
) -> tuple[float, float, float, float]:  # fmt: skip
    """(bag AUC, instance AUC, balanced accuracy at the val threshold, threshold)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    val_y = np.array([b.label for b in val])
    test_y = np.array([b.label for b in test])
    t = threshold_from_val(val_y, val_scores)
    bacc = float(balanced_accuracy_score(test_y, (test_scores >= t).astype(np.int64)))
    inst_y = np.concatenate(
        [b.instance_labels.numpy() for b in test if b.instance_labels is not None]
    )
    inst_s = np.concatenate(test_instance)
    inst_auc = float(roc_auc_score(inst_y > 0, inst_s))
    return float(roc_auc_score(test_y, test_scores)), inst_auc, bacc, t


#: inverse regularisation strengths the oracle chooses from on the validation bags' instances
ORACLE_C = (0.001, 0.01, 0.1, 1.0)


def _oracle(
    train: list[Bag], val: list[Bag], test: list[Bag]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A logistic regression on the true instance labels; its ``C`` is the one of
    :data:`ORACLE_C` with the best instance AUC on the validation bags (an oracle may look at
    instance labels; unregularised, it overfits wide features and is no ceiling)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def stack(bags: list[Bag]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.cat([b.features for b in bags]).numpy()
        y = torch.cat([b.instance_labels for b in bags if b.instance_labels is not None])
        return x, y.numpy() > 0

    x, y = stack(train)
    xv, yv = stack(val)
    best: tuple[float, Any] = (-1.0, None)
    for c in ORACLE_C:
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(x, y)
        auc = (
            float(roc_auc_score(yv, clf.predict_proba(xv)[:, 1])) if 0 < yv.sum() < len(yv) else 0.0
        )
        if auc > best[0]:
            best = (auc, clf)
    clf = best[1]

    def probs(bags: list[Bag]) -> list[np.ndarray]:
        return [clf.predict_proba(b.features.numpy())[:, 1] for b in bags]

    val_p, test_p = probs(val), probs(test)
    return np.array([p.mean() for p in val_p]), np.array([p.mean() for p in test_p]), test_p


def run_one(
    cfg: MILHamEvalConfig,
    encoder: str,
    row: str,
    seed: int,
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    images: np.ndarray | None = None,
    curves: Path | None = None,
) -> MILRow:
    """Train one row on one seed's bags and score it on the test bags."""
    from medcl.mil.ham_bags import bags_from_specs, make_split_bags
    from medcl.mil.train import MILTrainConfig, fit_mil, predict_bags

    b = cfg.bags
    specs = make_split_bags(
        labels, groups, n_bags={"train": b.n_train, "val": b.n_val, "test": b.n_test},
        positive_class=cfg.positive_class, bag_size=b.bag_size, witness_rate=b.witness_rate,
        positive_fraction=b.positive_fraction, val_size=b.val_size, test_size=b.test_size,
        seed=seed,
    )  # fmt: skip
    if row == "ins_e2e":
        if images is None:
            raise ValueError("ins_e2e needs the small images")
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        train, val, test = (bags_from_specs(specs[s], flat) for s in ("train", "val", "test"))
    else:
        # z-score every feature with the statistics of the train bags' images only
        seen = np.unique(np.concatenate([spec.indices for spec in specs["train"]]))
        mean, std = features[seen].mean(axis=0), features[seen].std(axis=0) + 1e-6
        scaled = ((features - mean) / std).astype(np.float32)
        train, val, test = (bags_from_specs(specs[s], scaled) for s in ("train", "val", "test"))
    best_epoch = -1
    test_inst: list[np.ndarray]
    if row == "oracle":
        val_s, test_s, test_inst = _oracle(train, val, test)
    else:
        if row == "ins_e2e":
            model, history = _fit_e2e(cfg, train, val, seed)
        else:
            options = {**cfg.train, **cfg.train_per_aggregator.get(row, {})}
            train_cfg = MILTrainConfig.model_validate({**options, "aggregator": row, "seed": seed})
            fit = fit_mil(train, val, train_cfg)
            model, history, best_epoch = fit.model, fit.history, fit.best_epoch
        if row.startswith("ins"):
            best_epoch = len(history) - 1
            if curves is not None:
                curves.mkdir(parents=True, exist_ok=True)
                path = curves / f"{slug(encoder)}_{row}_seed{seed}.json"
                path.write_text(json.dumps(history, indent=1).replace("NaN", "null"))
                plot_curves(history, path.with_suffix(".png"), f"{row} on {encoder}, seed {seed}")
        vp, tp = predict_bags(model, val, 8), predict_bags(model, test, 8)
        val_s, test_s, test_inst = vp.bag_scores, tp.bag_scores, list(tp.instance_scores)
    bag_auc, inst_auc, bacc, t = _score(val, test, val_s, test_s, test_inst)
    return MILRow(row_encoder(cfg, encoder, row), row, seed, bag_auc, inst_auc, bacc, t, best_epoch)


def _fit_e2e(
    cfg: MILHamEvalConfig, train: list[Bag], val: list[Bag], seed: int
) -> tuple[Any, list[dict[str, float]]]:
    from medcl.mil.ham_features import build_encoder
    from medcl.mil.ins_e2e import ImageINS, augment_views
    from medcl.mil.ins_train import INSOptions, fit_ins

    torch.manual_seed(seed)
    encoder = build_encoder(cfg.e2e.encoder)
    model = ImageINS(encoder, encoder.embed_dim, cfg.e2e.image_size)
    opts = INSOptions.model_validate(cfg.e2e.ins)
    history = fit_ins(
        model, train, val, opts, n_classes=2, seed=seed,
        views=augment_views(cfg.e2e.image_size, seed), diagnose_train=False,
    )  # fmt: skip
    return model, history


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """INS per epoch: pseudo-label accuracy (against the true instance labels; a diagnostic),
    validation bag and instance AUC, and the confidence coefficient phi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in history]
    for key in ("pseudo_label_acc", "val_auc", "val_instance_auc", "phi"):
        values = [r.get(key, math.nan) for r in history]
        ax.plot(epochs, values, marker=".", label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def interval(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 for one seed)."""
    from scipy import stats

    v = values.to_numpy(dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), half


def table(rows: list[MILRow]) -> str:
    """The README table: one line per encoder and row, mean [95% CI] over seeds."""
    df = pd.DataFrame([asdict(r) for r in rows])
    lines = [
        "| features | row | bag AUC | instance AUC | bag balanced acc. (val threshold) | seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def cell(values: pd.Series) -> str:
        mean, half = interval(values)
        return f"{mean:.3f} ± {half:.3f}"

    for (enc, row), grp in df.groupby(["encoder", "row"], sort=False):
        lines.append(
            f"| {enc} | {row} | {cell(grp.bag_auc)} | {cell(grp.instance_auc)} | "
            f"{cell(grp.bag_balanced_accuracy)} | {len(grp)} |"
        )
    return "\n".join(lines) + "\n"


def run_mil_ham_eval(
    cfg: MILHamEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[MILRow], str]:
    """Every row on every encoder and seed; rows are cached in ``results.csv`` for resuming."""
    unknown = sorted(set(cfg.rows) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    out = job_dir(cfg.out_dir, workspace, "eval", cfg.name)
    save_config(cfg, out)
    root = resolve_data_root(data_root)
    done_path = out / "results.csv"
    names = [f.name for f in fields(MILRow)]
    done: dict[tuple[str, str, int], MILRow] = {}
    if done_path.is_file():
        for rec in pd.read_csv(done_path, dtype={"settings": str}).to_dict(orient="records"):
            stored = rec.get("settings")
            values = {k: rec[k] for k in names if k != "settings"}
            r = MILRow(**values, settings=stored if isinstance(stored, str) else "")
            done[(r.encoder, r.row, int(r.seed))] = r
    if cfg.report_only:  # only rows made with the current settings
        current = {
            (row_encoder(cfg, e, r), r): row_settings(cfg, e, r)
            for e in cfg.encoders
            for r in cfg.rows
        }
        shown = [v for k, v in done.items() if current.get(k[:2]) == v.settings]
        if len(shown) < len(done):
            log.info("%d stored rows with other settings left out", len(done) - len(shown))
        return _report(cfg, out, shown, readme)
    images = None
    if "ins_e2e" in cfg.rows:
        size = cfg.e2e.image_size
        images = small_images(cfg.data, root, size, out / "features" / f"images_{size}px.npz")
    rows: list[MILRow] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models, many steps: one thread is faster on a busy CPU
    try:
        for encoder in cfg.encoders:
            cache = out / "features" / f"{slug(encoder)}_{cfg.image_size}px.npz"
            feats, labels, groups = embed_images(
                cfg.data, root, encoder, cfg.image_size, cfg.batch_size, cache
            )
            for seed in cfg.seeds:
                for name in cfg.rows:
                    if name == "ins_e2e" and encoder != cfg.encoders[0]:
                        continue  # its features are its own: run once
                    key = (row_encoder(cfg, encoder, name), name, seed)
                    settings = row_settings(cfg, encoder, name)
                    if key in done and done[key].settings != settings:
                        log.info(
                            "%s seed %d on %s: stored with other settings (%s, now %s); re-run",
                            name, seed, key[0], done[key].settings or "none", settings,
                        )  # fmt: skip
                        del done[key]
                    if key not in done:
                        result = run_one(
                            cfg, encoder, name, seed, feats, labels, groups, images, out / "curves"
                        )
                        done[key] = replace(result, settings=settings)
                        log.info("%s", done[key])
                        with done_path.open("w", newline="") as fh:
                            writer = csv.DictWriter(fh, fieldnames=names)
                            writer.writeheader()
                            writer.writerows(asdict(r) for r in done.values())
                    rows.append(done[key])
    finally:
        torch.set_num_threads(threads)
    return _report(cfg, out, rows, readme)


def _report(
    cfg: MILHamEvalConfig, out: Path, rows: list[MILRow], readme: Path | None
) -> tuple[list[MILRow], str]:
    pairs = [(row_encoder(cfg, e, r), r) for e in cfg.encoders for r in ROWS]
    order = {pair: i for i, pair in enumerate(pairs)}
    rows = sorted(rows, key=lambda r: (order.get((r.encoder, r.row), len(order)), r.seed))
    text = table(rows)
    (out / "results.md").write_text(text)
    if readme is not None:
        b = cfg.bags
        note = (
            f"Produced by `medcl eval mil-ham` (seeds {cfg.seeds}; frozen features of "
            f"{', '.join(f'`{e}`' for e in cfg.encoders)} at {cfg.image_size} px; INS end to end: "
            f"`{cfg.e2e.encoder}` trained on {cfg.e2e.image_size} px images for "
            f"{cfg.e2e.ins.get('epochs', 40)} epochs): "
            f"{b.n_train}/{b.n_val}/{b.n_test} train/val/test bags of {b.bag_size[0]}-"
            f"{b.bag_size[1]} images, positive iff a melanoma is inside, witness rate "
            f"{b.witness_rate[0]:.0%}-{b.witness_rate[1]:.0%}, lesions never in two splits; "
            "mean ± half-width of the 95% t-interval over seeds."
        )
        update_readme(readme, text, note, markers=MARKERS)
    return rows, text
