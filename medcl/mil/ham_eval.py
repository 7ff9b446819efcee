"""``medcl eval mil-ham``: a MIL benchmark from real images with known instance labels.

HAM10000 dermoscopy images become instances: a bag of 20-100 images is positive iff it holds at
least one melanoma, and positive bags hold few of them (witness rate 5-20%), like a slide with a
small tumour. Lesions are split into train / val / test first (no lesion in two splits), bags are
drawn inside each split (:mod:`medcl.mil.ham_bags`). Every image is embedded once with a frozen
encoder (the SimCLR checkpoint of ``medcl eval patch-ssl`` by default; cached), then for each
seed and aggregator (mean pooling, ABMIL, the INS instance classifier) a model is trained on the
train bags with early stopping on the val bags and scored on the test bags: bag AUC, and
instance AUC of the instance scores (ABMIL: its attention weights, mean pooling: the instance
scores of its classifier applied to each instance).

Outputs: ``results.csv``, ``results.md`` (and the README between markers), a bar plot with seed
spread, and the resolved config.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.models.encoders import create_encoder
from medcl.pretrain.evaluate import update_readme
from medcl.pretrain.patch_data import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.pretrain.probe import extract_features
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir, slug

log = logging.getLogger(__name__)

MARKERS = ("<!-- mil-ham:start -->", "<!-- mil-ham:end -->")


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


class MILHamEvalConfig(StrictModel):
    """The HAM10000 MIL benchmark."""

    name: str = "mil_ham"
    data: PatchDataConfig = Field(
        default_factory=lambda: PatchDataConfig(path=Path("ham10000"), format="ham10000")
    )
    encoder: str = "timm:resnet18"
    image_size: int = Field(default=96, ge=16)
    batch_size: int = Field(default=128, ge=1)
    positive_class: str = "mel"
    bags: BagOptions = Field(default_factory=BagOptions)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    aggregators: list[str] = Field(default_factory=lambda: ["mean", "abmil", "ins"])
    train: dict[str, object] = Field(
        default_factory=dict, description="MILTrainConfig fields shared by every aggregator"
    )
    train_per_aggregator: dict[str, dict[str, object]] = Field(default_factory=dict)
    out_dir: Path | None = None


@dataclass(frozen=True)
class MILRow:
    """One aggregator and seed on the test bags."""

    aggregator: str
    seed: int
    bag_auc: float
    bag_balanced_accuracy: float
    instance_auc: float
    best_epoch: int


def embed_images(cfg: MILHamEvalConfig, root: Path | None, cache: Path) -> tuple[np.ndarray, ...]:
    """``(features (N, D), labels (N,) str, groups (N,) str)`` of every image, cached."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return saved["features"], saved["labels"], saved["groups"]
    ds = load_filtered_image_set(cfg.data, root)
    torch.manual_seed(0)  # a random-init encoder is the same on every run
    encoder = create_encoder(cfg.encoder)
    size = (cfg.image_size, cfg.image_size)
    encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
    loader = DataLoader(
        ImageViewsDataset(ds, encoder.eval_transform),
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
    )
    log.info("embedding %d images with %s", len(ds), cfg.encoder)
    features = extract_features(encoder, loader, progress=True)[0].astype(np.float32)
    labels = ds.df["label"].to_numpy().astype(str)  # fixed-width unicode: no pickling
    groups = ds.df["group"].to_numpy().astype(str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=features, labels=labels, groups=groups)
    return features, labels, groups


def run_one(
    cfg: MILHamEvalConfig,
    aggregator: str,
    seed: int,
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
) -> MILRow:
    """Train one aggregator on one seed's bags and score it on the test bags."""
    from medcl.mil.ham_bags import bags_from_specs, make_split_bags
    from medcl.mil.train import MILTrainConfig, fit_mil, mil_metrics, predict_bags

    b = cfg.bags
    specs = make_split_bags(
        labels,
        groups,
        n_bags={"train": b.n_train, "val": b.n_val, "test": b.n_test},
        positive_class=cfg.positive_class,
        bag_size=b.bag_size,
        witness_rate=b.witness_rate,
        positive_fraction=b.positive_fraction,
        val_size=b.val_size,
        test_size=b.test_size,
        seed=seed,
    )
    # z-score every feature with the statistics of the train bags' images only
    seen = np.unique(np.concatenate([spec.indices for spec in specs["train"]]))
    mean, std = features[seen].mean(axis=0), features[seen].std(axis=0) + 1e-6
    scaled = ((features - mean) / std).astype(np.float32)
    train, val, test = (bags_from_specs(specs[s], scaled) for s in ("train", "val", "test"))
    options = {**cfg.train, **cfg.train_per_aggregator.get(aggregator, {})}
    train_cfg = MILTrainConfig.model_validate({**options, "aggregator": aggregator, "seed": seed})
    fit = fit_mil(train, val, train_cfg)
    metrics = mil_metrics(test, predict_bags(fit.model, test))
    return MILRow(
        aggregator,
        seed,
        float(metrics["auc"]),
        float(metrics["balanced_accuracy"]),
        float(metrics["instance_auc"]),
        int(fit.best_epoch),
    )


def _table(rows: list[MILRow]) -> str:
    df = pd.DataFrame([asdict(r) for r in rows])

    def cell(values: pd.Series) -> str:
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return f"{values.mean():.3f} +- {std:.3f}"

    lines = [
        "| aggregator | bag AUC | instance AUC | bag balanced acc. "
        "| per seed (bag / instance AUC) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, grp in df.groupby("aggregator", sort=False):
        seeds = ", ".join(
            f"{r.bag_auc:.3f} / {r.instance_auc:.3f}" for r in grp.itertuples(index=False)
        )
        lines.append(
            f"| {name} | {cell(grp.bag_auc)} | {cell(grp.instance_auc)} | "
            f"{cell(grp.bag_balanced_accuracy)} | {seeds} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[MILRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame([asdict(r) for r in rows])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("bag_auc", "instance_auc"), strict=True):
        stats = df.groupby("aggregator", sort=False)[metric].agg(["mean", "std"]).fillna(0)
        ax.bar(stats.index, stats["mean"], yerr=stats["std"], capsize=4, color="#4c72b0")
        for i, name in enumerate(stats.index):
            ax.scatter([i] * int((df.aggregator == name).sum()), df[df.aggregator == name][metric],
                       color="k", s=10, zorder=3)  # fmt: skip
        ax.set_ylim(0.4, 1.0)
        ax.set_title(metric.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_mil_ham_eval(
    cfg: MILHamEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[MILRow], str]:
    """Every aggregator on every seed; rows are cached per (aggregator, seed) for resuming."""
    out = job_dir(cfg.out_dir, workspace, "eval", cfg.name)
    save_config(cfg, out)
    root = data_root or resolve_data_root()
    features, labels, groups = embed_images(
        cfg, root, out / "features" / f"{slug(cfg.encoder)}_{cfg.image_size}px.npz"
    )
    done_path = out / "results.csv"
    done: dict[tuple[str, int], MILRow] = {}
    if done_path.is_file():
        for rec in pd.read_csv(done_path).to_dict(orient="records"):
            row = MILRow(**{k: rec[k] for k in MILRow.__dataclass_fields__})
            done[(row.aggregator, int(row.seed))] = row
    rows: list[MILRow] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models, many steps: one thread is faster on a busy CPU
    for seed in cfg.seeds:
        for agg in cfg.aggregators:
            if (agg, seed) not in done:
                done[(agg, seed)] = run_one(cfg, agg, seed, features, labels, groups)
                log.info("%s seed %d: %s", agg, seed, done[(agg, seed)])
                with done_path.open("w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=list(MILRow.__dataclass_fields__))
                    writer.writeheader()
                    writer.writerows(asdict(r) for r in done.values())
            rows.append(done[(agg, seed)])
    torch.set_num_threads(threads)
    table = _table(rows)
    (out / "results.md").write_text(table)
    _plot(rows, out / "results.png")
    if readme is not None:
        b = cfg.bags
        note = (
            f"Produced by `medcl eval mil-ham` (seeds {cfg.seeds}, encoder `{cfg.encoder}` at "
            f"{cfg.image_size} px): {b.n_train}/{b.n_val}/{b.n_test} train/val/test bags of "
            f"{b.bag_size[0]}-{b.bag_size[1]} images, positive iff a melanoma is inside, witness "
            f"rate {b.witness_rate[0]:.0%}-{b.witness_rate[1]:.0%}, lesions never in two splits."
        )
        update_readme(readme, table, note, markers=MARKERS)
    return rows, table
