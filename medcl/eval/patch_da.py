"""``medcl eval patch-da``: patch pretraining as domain adaptation across acquisition sites.

The probe is trained on labelled *source-site* images only and tested on the *target site*
(lesions never on both sides). Encoders, per seed:

* ``random init``: the architecture with seeded random weights;
* ``ImageNet``: the offline ImageNet weights (``offline:efficientnet_lite0-imagenet``);
* ``ImageNet + SimCLR``: those weights pretrained further with SimCLR (NT-Xent) on the
  *unlabelled* images of both sites (no label is used), probed at every ``curve_every`` steps
  from one run's checkpoints, so the table shows whether the probe curve has flattened.

Each probe: weighted k-NN and a class-balanced logistic regression on frozen features; accuracy
and balanced accuracy on the target site. ``results.csv`` holds every (method, seed, step) row,
``results.md`` the table (mean +- 95% interval over seeds), ``curve.png`` target balanced accuracy
against SimCLR steps. Finished runs are reused when their settings stamp matches.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.engine.checkpoint import list_checkpoints, load_checkpoint
from medcl.engine.stamps import check_stamp, output_settings, settings_digest
from medcl.errors import ConfigError, InvalidInputError
from medcl.eval.features import extract_features
from medcl.eval.metrics import class_recalls, classification_metrics
from medcl.eval.probe import knn_predict, linear_probe, select_c
from medcl.eval.tables import mean_half_width, update_readme
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import ImageSet
from medcl.models.encoder_base import Encoder
from medcl.models.encoders import PRETRAINED_ENCODER, create_encoder
from medcl.pretrain.patch import ContrastiveModel, PatchPretrainConfig, run_pretrain_patch
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)

MARKERS = ("<!-- patch-da:start -->", "<!-- patch-da:end -->")


class PatchDAEvalConfig(StrictModel):
    """Sites, encoders, the SimCLR recipe and the probe."""

    name: str = "patch_da"
    data: PatchDataConfig = Field(default_factory=lambda: PatchDataConfig(use="all"))
    source_domains: list[str] = Field(default_factory=list)
    target_domains: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    random_encoder: str = "timm:efficientnet_lite0"
    encoder: str = PRETRAINED_ENCODER
    pretrain: PatchPretrainConfig = Field(default_factory=PatchPretrainConfig)
    curve_every: int = Field(default=50, ge=1, description="probe every N SimCLR steps")
    image_size: int = Field(default=64, ge=16)
    batch_size: int = Field(default=128, ge=1)
    k: int = Field(default=20, ge=1)
    knn_temperature: float = Field(default=0.07, gt=0)
    probe_cs: list[float] = Field(
        default_factory=lambda: [1.0],
        description="linear probe C grid, chosen on a lesion-grouped validation part of the "
        "source site (never the target); one value: used as it is",
    )
    probe_val_size: float = Field(default=0.25, gt=0, lt=1)
    out_dir: Path | None = None


@dataclass(frozen=True)
class DARow:
    """One probe of one encoder: trained on the source site, scored on the target site."""

    method: str
    seed: int
    step: int
    knn_accuracy: float
    knn_balanced_accuracy: float
    linear_accuracy: float
    linear_balanced_accuracy: float
    n_source: int
    n_target: int
    linear_c: float = 1.0
    linear_recall: dict[str, float] = field(default_factory=dict)


def split_sites(ds: ImageSet, cfg: PatchDAEvalConfig) -> tuple[ImageSet, ImageSet]:
    """(source, target) images; target groups seen in the source are dropped.

    Raises:
        ConfigError: a side names no domain, or a domain is on both sides.
        InvalidInputError: a domain value not in the column (values listed), or a class empty
            on one side (named, with its counts).
    """
    if not cfg.source_domains or not cfg.target_domains:
        raise ConfigError("patch_da", "source_domains", "name the source and the target domains")
    both = sorted(set(cfg.source_domains) & set(cfg.target_domains))
    if both:
        raise ConfigError("patch_da", "target_domains", f"{', '.join(both)} on both sides")
    domain = ds.df["domain"].astype(str)
    values = domain.value_counts().sort_index()
    missing = [d for d in cfg.source_domains + cfg.target_domains if d not in values.index]
    if missing:
        listed = ", ".join(f"{v} ({n})" for v, n in values.items())
        raise InvalidInputError(
            cfg.data.path or "data.path",
            f"domain value(s) {', '.join(missing)} not in the domain column; its values: {listed}",
        )
    source = ds.subset(domain.isin(cfg.source_domains).to_numpy())
    seen = set(source.df["group"].astype(str))
    target_mask = domain.isin(cfg.target_domains) & ~ds.df["group"].astype(str).isin(seen)
    target = ds.subset(target_mask.to_numpy())
    empty = [
        f"'{c}' ({(source.df['label'] == c).sum()} source, {(target.df['label'] == c).sum()} "
        "target)"
        for c in ds.classes
        if not ((source.df["label"] == c).any() and (target.df["label"] == c).any())
    ]
    if empty:
        raise InvalidInputError(
            cfg.data.path or "data.path",
            f"the site split leaves class(es) empty on one side: {', '.join(empty)}; pick other "
            "sites or leave the class out (data.classes + data.drop_unmapped=true)",
        )
    return source, target


def probe_sites(
    encoder: Encoder, source: ImageSet, target: ImageSet, cfg: PatchDAEvalConfig, seed: int
) -> dict[str, Any]:
    """k-NN and linear probe fitted on ``source`` features, scored on ``target``."""
    size = (cfg.image_size, cfg.image_size)
    encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
    feats = []
    for part in (source, target):
        loader = DataLoader(
            ImageViewsDataset(part, encoder.eval_transform),
            batch_size=cfg.batch_size,
            num_workers=cfg.data.num_workers,
        )
        feats.append(extract_features(encoder, loader, progress=False))
    (xs, ys), (xt, yt) = feats
    n = len(source.class_map)
    knn = classification_metrics(
        yt, knn_predict(xs, ys, xt, k=cfg.k, temperature=cfg.knn_temperature, num_classes=n), n
    )
    groups = source.df["group"].astype(str).to_numpy()
    c, _ = select_c(xs, ys, groups, cfg.probe_cs, val_size=cfg.probe_val_size, seed=seed)
    predicted = linear_probe(xs, ys, xt, c=c, seed=seed)
    lin = classification_metrics(yt, predicted, n)
    recall = dict(zip(source.classes, class_recalls(yt, predicted, n).tolist(), strict=True))
    return {
        "knn_accuracy": knn["accuracy"],
        "knn_balanced_accuracy": knn["balanced_accuracy"],
        "linear_accuracy": lin["accuracy"],
        "linear_balanced_accuracy": lin["balanced_accuracy"],
        "linear_c": c,
        "linear_recall": recall,
    }


def _simclr(cfg: PatchDAEvalConfig, seed: int, folder: Path, root: Path | None) -> Path:
    """SimCLR from ``cfg.encoder`` on the unlabelled images of both sites; the train folder."""
    pre = cfg.pretrain.model_copy(deep=True)
    pre.encoder, pre.loss = cfg.encoder, "ntxent"
    pre.data = cfg.data.model_copy(
        update={"domains": cfg.source_domains + cfg.target_domains, "use": "all"}
    )
    pre.out_dir, pre.name = folder, f"simclr seed {seed}"
    pre.train = pre.train.model_copy(
        update={"seed": seed, "ckpt_every": cfg.curve_every, "keep_last": 0}
    )
    run_pretrain_patch(pre, data_root=root)
    return folder / "train"


def _encoder_at(cfg: PatchDAEvalConfig, ckpt: Path) -> Encoder:
    encoder = create_encoder(cfg.encoder)
    model = ContrastiveModel(encoder, cfg.pretrain.projection_hidden, cfg.pretrain.projection_dim)
    load_checkpoint(ckpt, model=model)
    return encoder


def simclr_settings(cfg: PatchDAEvalConfig, seed: int) -> dict[str, Any]:
    """What changes a seed's SimCLR run (its folder's stamp)."""
    return {
        "seed": seed,
        "encoder": cfg.encoder,
        "sites": [cfg.source_domains, cfg.target_domains],
        "pretrain": output_settings(cfg.pretrain.model_dump(mode="json")),
        "data": output_settings(cfg.data.model_dump(mode="json")),
        "curve_every": cfg.curve_every,
    }


def probe_settings(cfg: PatchDAEvalConfig) -> dict[str, Any]:
    """What changes the probe rows on top of the SimCLR run (their file's name)."""
    return {
        "random_encoder": cfg.random_encoder,
        "probe": [cfg.image_size, cfg.k, cfg.knn_temperature, cfg.probe_cs, cfg.probe_val_size],
        "rows_version": 2,  # 2: per-class recall of the linear probe
    }


def _run_seed(
    cfg: PatchDAEvalConfig,
    seed: int,
    source: ImageSet,
    target: ImageSet,
    out: Path,
    root: Path | None,
) -> list[DARow]:
    folder = out / f"seed{seed}"
    simclr, probe = simclr_settings(cfg, seed), probe_settings(cfg)
    # the SimCLR run is stamped by what changes it; the probe rows are named by what changes
    # them, so another probe re-scores the same checkpoints instead of pretraining again
    check_stamp(folder, simclr, has_outputs=(folder / "simclr").exists())
    done = folder / f"rows_{settings_digest({**simclr, **probe})}.json"
    if done.is_file():
        return [DARow(**r) for r in json.loads(done.read_text())]
    sizes = (len(source), len(target))
    rows = []

    def add(method: str, step: int, encoder: Encoder) -> None:
        scores = probe_sites(encoder, source, target, cfg, seed)
        rows.append(DARow(method, seed, step, **scores, n_source=sizes[0], n_target=sizes[1]))
        log.info("seed %d %s step %d: %s", seed, method, step, scores)

    torch.manual_seed(seed)
    add("random init", 0, create_encoder(cfg.random_encoder))
    add("ImageNet", 0, create_encoder(cfg.encoder))
    train_dir = _simclr(cfg, seed, folder / "simclr", root)
    for step, ckpt in list_checkpoints(train_dir):
        add("ImageNet + SimCLR", step, _encoder_at(cfg, ckpt))
    done.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


def _table(df: pd.DataFrame) -> str:
    def cell(values: pd.Series) -> str:
        mean, half = mean_half_width(values.to_numpy())
        return f"{mean:.3f}" if np.isnan(half) else f"{mean:.3f} +- {half:.3f}"

    lines = [
        "| encoder | SimCLR steps | linear balanced acc. (target) | k-NN balanced acc. (target) "
        "| linear acc. | k-NN acc. |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (method, step), grp in df.groupby(["method", "step"], sort=False):
        lines.append(
            f"| {method} | {step} | {cell(grp.linear_balanced_accuracy)} | "
            f"{cell(grp.knn_balanced_accuracy)} | {cell(grp.linear_accuracy)} | "
            f"{cell(grp.knn_accuracy)} |"
        )
    lines.append(f"\nmean +- half-width of the 95% t-interval over {df.seed.nunique()} seeds.")
    chosen = df.groupby("method", sort=False).linear_c.apply(
        lambda c: ", ".join(f"{v:g} ({n}x)" for v, n in c.value_counts().sort_index().items())
    )
    lines.append(
        "Linear-probe C chosen on a lesion-grouped validation part of the source site: "
        + "; ".join(f"{m}: {c}" for m, c in chosen.items())
        + "."
    )
    return "\n".join(lines) + "\n"


def _flat_row(row: DARow) -> dict[str, Any]:
    """A row for the CSV: the per-class recalls as ``linear_recall_<class>`` columns."""
    out = asdict(row)
    out.update({f"linear_recall_{c}": v for c, v in out.pop("linear_recall").items()})
    return out


def _recall_table(df: pd.DataFrame, classes: list[str]) -> str:
    """Target-site recall of each class (linear probe, mean over seeds): the baselines and the
    last SimCLR step; empty when the rows hold no recalls."""
    last = df.loc[df.method == "ImageNet + SimCLR", "step"].max()
    pick = df[(df.method != "ImageNet + SimCLR") | (df.step == last)]
    lines = [
        "",
        "Target-site recall of each class, linear probe (mean over seeds):",
        "",
        "| encoder | SimCLR steps | " + " | ".join(classes) + " |",
        "| --- | --- |" + " --- |" * len(classes),
    ]
    for (method, step), grp in pick.groupby(["method", "step"], sort=False):
        recalls = pd.DataFrame([r for r in grp.linear_recall if r])
        if recalls.empty:
            return ""
        cells = [
            f"{recalls[c].mean():.2f}" if c in recalls and recalls[c].notna().any() else "-"
            for c in classes
        ]
        lines.append(f"| {method} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    curve = df[df.method == "ImageNet + SimCLR"].groupby("step")
    for metric, style in (("linear_balanced_accuracy", "o-"), ("knn_balanced_accuracy", "s--")):
        ax.errorbar(
            curve[metric].mean().index, curve[metric].mean(), yerr=curve[metric].std().fillna(0),
            fmt=style, capsize=3, label=f"SimCLR: {metric.split('_')[0]}",
        )  # fmt: skip
        base = df[df.method == "ImageNet"][metric].mean()
        ax.axhline(base, ls=":", c="grey")
    ax.set_xlabel("SimCLR steps on source + target (unlabelled)")
    ax.set_ylabel("target-site balanced accuracy")
    ax.legend(fontsize=7, title="dotted: ImageNet", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_patch_da_eval(
    cfg: PatchDAEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[DARow], str]:
    """Run every seed; returns the rows and the markdown table (with the class x site table)."""
    out = job_dir(cfg.out_dir, workspace, "eval", cfg.name)
    save_config(cfg, out)
    root = resolve_data_root(data_root)
    source, target = split_sites(load_filtered_image_set(cfg.data, root), cfg)
    log.info("source: %d images, target: %d images", len(source), len(target))
    rows = [r for seed in cfg.seeds for r in _run_seed(cfg, seed, source, target, out, root)]
    df = pd.DataFrame([asdict(r) for r in rows])
    table = _table(df) + _recall_table(df, source.classes)
    src, tgt = "+".join(cfg.source_domains), "+".join(cfg.target_domains)
    counts = ["", f"| class | {src} (probe train) | {tgt} (probe test) |", "| --- | --- | --- |"]
    for c in source.classes:
        counts.append(
            f"| {c} | {(source.df['label'] == c).sum()} | {(target.df['label'] == c).sum()} |"
        )
    table += "\n".join(counts) + "\n"
    (out / "results.md").write_text(table)
    flat = [_flat_row(r) for r in rows]
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)
    _plot(df, out / "curve.png")
    if readme is not None:
        note = (
            f"Produced by `medcl eval patch-da` (seeds {cfg.seeds}): probe trained on {src} "
            f"({len(source)} images), tested on {tgt} ({len(target)} images); SimCLR on both "
            f"sites' images without labels, {cfg.pretrain.train.max_steps} steps."
        )
        update_readme(readme, table, note, markers=MARKERS)
    return rows, table
