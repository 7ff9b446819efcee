"""``medcl shift report``: how far is one site from another, in an encoder's embedding space?

Two sides, A and B: two image sets, or two groups of values of a domain column of one set (e.g.
HAM10000's ``dataset``: ``vidir_modern`` vs ``rosendahl``). For each encoder (the starting one
and, optionally, its CCI fine-tune) the report gives:

* **domain AUC**: a logistic regression on the (standardised) embeddings predicts the side,
  cross-validated with stratified group folds (a lesion / patient never in two folds); the ROC
  AUC of the out-of-fold scores. 0.5: the sides look alike; 1.0: every image gives its site away.
* **per-class shift**: for each class present on both sides, the domain AUC of those out-of-fold
  scores within the class (the shift a class-conditional method has to remove, free of the label
  mix) and the cosine distance between the class centroids of the two sides.
* **label mix**: counts and shares of each class per side and their total-variation distance (a
  label shift that no embedding can remove).
* **embedding map**: t-SNE (scikit-learn) of both sides, coloured by side and by class (PNG), with
  the coordinates in a CSV.

Everything goes to ``report.json`` and ``report.md`` beside the PNGs and the resolved config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.engine.stamps import settings_digest
from medcl.errors import ConfigError, InvalidInputError
from medcl.eval.features import extract_features
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import ImageSet
from medcl.models.encoders import PRETRAINED_ENCODER
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir, slug

log = logging.getLogger(__name__)


class ShiftReportConfig(StrictModel):
    """Two sides (image sets or domain values) and the encoders to measure them with."""

    name: str = "shift"
    data: PatchDataConfig = Field(default_factory=lambda: PatchDataConfig(use="all"))
    data_b: PatchDataConfig | None = Field(
        default=None, description="a second image set as side B (else: domains_b of data)"
    )
    domains_a: list[str] | None = Field(default=None, description="domain values of side A")
    domains_b: list[str] | None = Field(default=None, description="domain values of side B")
    classes: list[str] | None = Field(
        default=None, description="classes to report (each must be on both sides)"
    )
    encoder: str = PRETRAINED_ENCODER
    cci_encoder: str | None = Field(default=None, description="the CCI fine-tune (medcl:PATH)")
    image_size: int = Field(default=96, ge=16)
    max_per_side: int | None = Field(default=1500, ge=10)
    folds: int = Field(default=5, ge=2)
    batch_size: int = Field(default=128, ge=1)
    perplexity: float = Field(default=30.0, gt=1)
    seed: int = 0
    out_dir: Path | None = None


@dataclass
class Sides:
    """The two sides as one image set with ``side`` 0 (A) / 1 (B) per image."""

    images: ImageSet
    side: np.ndarray  # (N,) int
    names: tuple[str, str]


def _domain_values(ds: ImageSet) -> str:
    counts = ds.df["domain"].astype(str).value_counts().sort_index()
    return ", ".join(f"{v} ({n})" for v, n in counts.items())


def _pick(ds: ImageSet, values: list[str], key: str, where: Path | str) -> np.ndarray:
    present = set(ds.df["domain"].astype(str))
    missing = [v for v in values if v not in present]
    if missing:
        raise InvalidInputError(
            where,
            f"{key}: domain value(s) {', '.join(missing)} not in the domain column; "
            f"its values: {_domain_values(ds)}",
        )
    return np.flatnonzero(ds.df["domain"].astype(str).isin(values).to_numpy())


def _load(cfg: PatchDataConfig, root: Path | None) -> ImageSet:
    return load_filtered_image_set(cfg.model_copy(update={"domains": None}), root)


def load_sides(cfg: ShiftReportConfig, root: Path | None) -> Sides:
    """Side A and side B as one image set (classes mapped alike on both sides).

    Raises:
        ConfigError: no side B given, or a value on both sides.
        InvalidInputError: a domain value that is not in the column (the values are listed).
    """
    where = cfg.data.path or "data.path"
    full = _load(cfg.data, root)
    if cfg.data_b is not None:
        a_idx = (
            _pick(full, cfg.domains_a, "domains_a", where)
            if cfg.domains_a
            else np.arange(len(full))
        )
        other = _load(cfg.data_b, root)
        b_full = other
        if cfg.domains_b:
            b_full = other.subset(_pick(other, cfg.domains_b, "domains_b", cfg.data_b.path or ""))
        a_df = full.df.iloc[a_idx]
        df = pd.concat([a_df, b_full.df], ignore_index=True)
        side = np.r_[np.zeros(len(a_df), int), np.ones(len(b_full), int)]
        names = (str(cfg.data.path), str(cfg.data_b.path))
    else:
        if not cfg.domains_a or not cfg.domains_b:
            raise ConfigError(
                "shift", "domains_b", f"name both sides; domain values: {_domain_values(full)}"
            )
        both = sorted(set(cfg.domains_a) & set(cfg.domains_b))
        if both:
            raise ConfigError("shift", "domains_b", f"{', '.join(both)} on both sides")
        a_idx = _pick(full, cfg.domains_a, "domains_a", where)
        b_idx = _pick(full, cfg.domains_b, "domains_b", where)
        df = pd.concat([full.df.iloc[a_idx], full.df.iloc[b_idx]], ignore_index=True)
        side = np.r_[np.zeros(len(a_idx), int), np.ones(len(b_idx), int)]
        names = ("+".join(cfg.domains_a), "+".join(cfg.domains_b))
    labels = sorted(df["label"].astype(str).unique())
    images = ImageSet(df, name="sides", class_map={c: i for i, c in enumerate(labels)})
    return Sides(images, side, names)


def reported_classes(sides: Sides, wanted: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """The classes reported per class, and those left out (present on one side only).

    Raises:
        InvalidInputError: a class of ``wanted`` is empty on a side (named, with its counts).
    """
    labels = sides.images.df["label"].astype(str).to_numpy()
    counts = {
        c: (
            int(((labels == c) & (sides.side == 0)).sum()),
            int(((labels == c) & (sides.side == 1)).sum()),
        )
        for c in sorted(set(labels) | set(wanted or []))
    }
    if wanted is not None:
        empty = [c for c in wanted if 0 in counts[c]]
        if empty:
            detail = ", ".join(
                f"'{c}' ({counts[c][0]} on {sides.names[0]}, {counts[c][1]} on {sides.names[1]})"
                for c in empty
            )
            raise InvalidInputError(
                "classes",
                f"reported class(es) empty on one side: {detail}; drop them or pick other sides",
            )
        return list(wanted), {}
    keep = [c for c, (a, b) in counts.items() if a and b]
    dropped = {c: {"a": a, "b": b} for c, (a, b) in counts.items() if not (a and b)}
    for c, n in dropped.items():
        log.warning("class %s is on one side only (%s): left out of the per-class shift", c, n)
    return keep, dropped


def subsample(sides: Sides, max_per_side: int | None, seed: int) -> np.ndarray:
    """Row indices: at most ``max_per_side`` per side, drawn at random (seeded), sorted."""
    rng = np.random.default_rng(seed)
    keep = []
    for s in (0, 1):
        idx = np.flatnonzero(sides.side == s)
        if max_per_side is not None and len(idx) > max_per_side:
            idx = rng.choice(idx, max_per_side, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def label_mix(labels: np.ndarray, side: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Counts and shares per side and the total-variation distance of the two label mixes."""
    out: dict[str, Any] = {"classes": {}}
    shares = np.zeros((2, len(classes)))
    for s in (0, 1):
        n = max(int((side == s).sum()), 1)
        for j, c in enumerate(classes):
            shares[s, j] = ((labels == c) & (side == s)).sum() / n
    for j, c in enumerate(classes):
        out["classes"][c] = {
            "a": int(((labels == c) & (side == 0)).sum()),
            "b": int(((labels == c) & (side == 1)).sum()),
            "share_a": round(float(shares[0, j]), 4),
            "share_b": round(float(shares[1, j]), 4),
        }
    out["total_variation"] = round(float(0.5 * np.abs(shares[0] - shares[1]).sum()), 4)
    return out


def domain_scores(
    emb: np.ndarray, side: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold probabilities of side B from a logistic regression on ``emb`` (N, D).

    Stratified group folds: no group (lesion) in two folds. Fewer folds when a side has fewer
    groups than ``folds``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = min(len(set(groups[side == s])) for s in (0, 1))
    k = min(folds, n_groups)
    if k < 2:
        raise InvalidInputError("sides", f"a side has {n_groups} group(s); at least 2 needed")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = np.full(len(side), np.nan)
    for train, test in splitter.split(emb, side, groups):
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
        )
        model.fit(emb[train], side[train])
        scores[test] = model.predict_proba(emb[test])[:, 1]
    return scores


def _auc(side: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(side.tolist())) < 2:
        return None
    return round(float(roc_auc_score(side, scores)), 4)


def shift_metrics(
    emb: np.ndarray,
    side: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """Domain AUC overall and per class, and per-class centroid cosine distances.

    Args:
        emb: (N, D) embeddings; side: (N,) 0/1; labels, groups: (N,) strings.
    """
    scores = domain_scores(emb, side, groups, folds, seed)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    per_class: dict[str, Any] = {}
    for c in classes:
        m = labels == c
        n_a, n_b = int((m & (side == 0)).sum()), int((m & (side == 1)).sum())
        if not (n_a and n_b):  # empty on a side after subsampling: nothing to compare
            per_class[c] = {"n_a": n_a, "n_b": n_b, "domain_auc": None, "centroid_distance": None}
            continue
        ca, cb = unit[m & (side == 0)].mean(0), unit[m & (side == 1)].mean(0)
        cos = float(ca @ cb / max(np.linalg.norm(ca) * np.linalg.norm(cb), 1e-12))
        per_class[c] = {
            "n_a": n_a,
            "n_b": n_b,
            "domain_auc": _auc(side[m], scores[m]),
            "centroid_distance": round(1 - cos, 4),
        }
    aucs = [v["domain_auc"] for v in per_class.values() if v["domain_auc"] is not None]
    dists = [
        v["centroid_distance"] for v in per_class.values() if v["centroid_distance"] is not None
    ]
    return {
        "domain_auc": _auc(side, scores),
        "mean_class_domain_auc": round(float(np.mean(aucs)), 4) if aucs else None,
        "mean_centroid_distance": round(float(np.mean(dists)), 4) if dists else None,
        "per_class": per_class,
    }


def embed(sides: Sides, rows: np.ndarray, encoder_name: str, cfg: ShiftReportConfig) -> np.ndarray:
    """Embeddings (len(rows), D) of the chosen images with a registry encoder."""
    import torch

    from medcl.retrieval.pool import load_encoder

    torch.manual_seed(cfg.seed)  # randomly initialised encoders are seeded
    encoder = load_encoder(encoder_name, cfg.image_size)
    loader = DataLoader(
        ImageViewsDataset(sides.images.subset(rows), encoder.eval_transform),
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
    )
    return extract_features(encoder, loader, progress=False)[0]


def tsne_map(emb: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """(N, 2) t-SNE coordinates of the standardised embeddings (PCA to 50 dims first)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = (emb - emb.mean(0)) / np.maximum(emb.std(0), 1e-6)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        x
    )


def plot_map(
    xy: np.ndarray,
    side: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, str],
    title: str,
    path: Path,
) -> None:
    """Two panels: points coloured by side, then by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for s, colour in ((0, "tab:blue"), (1, "tab:orange")):
        m = side == s
        axes[0].scatter(
            xy[m, 0], xy[m, 1], s=5, c=colour, alpha=0.6, label=f"{names[s]} ({m.sum()})"
        )
    axes[0].set_title("by side", fontsize=10)
    axes[0].legend(fontsize=8, markerscale=3)
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(sorted(set(labels.tolist()))):
        for s, marker in ((0, "o"), (1, "^")):
            m = (labels == c) & (side == s)
            axes[1].scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(j % 10), marker=marker, alpha=0.6,
                            label=c if s == 0 else None)  # fmt: skip
    axes[1].set_title("by class (o: side A, ^: side B)", fontsize=10)
    axes[1].legend(fontsize=8, markerscale=3)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    a, b = report["sides"]["a"]["name"], report["sides"]["b"]["name"]
    lines = [
        f"Shift between A = {a} ({report['sides']['a']['n']} images) and B = {b} "
        f"({report['sides']['b']['n']} images).",
        "",
        "| encoder | domain AUC | mean per-class domain AUC | mean class-centroid distance |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in report["encoders"].items():
        lines.append(
            f"| {name} | {m['domain_auc']} | {m['mean_class_domain_auc']} | "
            f"{m['mean_centroid_distance']} |"
        )
    classes = list(report["label_mix"]["classes"])
    lines += ["", "| class | A | B | share A | share B | " + " | ".join(
        f"{n}: domain AUC / centroid dist." for n in report["encoders"]) + " |"]  # fmt: skip
    lines.append("|" + " --- |" * (5 + len(report["encoders"])))
    for c in classes:
        mix = report["label_mix"]["classes"][c]
        cells = []
        for m in report["encoders"].values():
            pc = m["per_class"].get(c)
            cells.append(f"{pc['domain_auc']} / {pc['centroid_distance']}" if pc else "-")
        lines.append(
            f"| {c} | {mix['a']} | {mix['b']} | {mix['share_a']:.3f} | {mix['share_b']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(f"\nLabel-mix total variation: {report['label_mix']['total_variation']}.")
    return "\n".join(lines) + "\n"


def run_shift_report(
    cfg: ShiftReportConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> dict[str, Any]:
    """Measure the shift between the two sides with every configured encoder; the report."""
    out = job_dir(cfg.out_dir, workspace, "shift", cfg.name)
    save_config(cfg, out)
    root = resolve_data_root(data_root)
    sides = load_sides(cfg, root)
    classes, dropped = reported_classes(sides, cfg.classes)
    rows = subsample(sides, cfg.max_per_side, cfg.seed)
    df = sides.images.df.iloc[rows]
    labels = df["label"].astype(str).to_numpy()
    groups = df["group"].astype(str).to_numpy()
    side = sides.side[rows]
    in_reported = np.isin(labels, classes)
    report: dict[str, Any] = {
        "sides": {
            k: {
                "name": sides.names[s],
                "n": int((side == s).sum()),
                "n_total": int((sides.side == s).sum()),
            }
            for k, s in (("a", 0), ("b", 1))
        },
        "classes": classes,
        "classes_left_out": dropped,
        "label_mix": label_mix(labels, side, sorted(set(labels.tolist()))),
        "encoders": {},
        "maps": {},
    }
    encoders = {"start": cfg.encoder}
    if cfg.cci_encoder:
        encoders["after CCI"] = cfg.cci_encoder
    cache = out / "embeddings"
    coords = []
    for label, name in encoders.items():
        key = {"encoder": name, "size": cfg.image_size, "paths": df["path"].astype(str).tolist()}
        file = cache / f"{slug(name, 40)}_{settings_digest(key)}.npy"
        if file.is_file():
            emb = np.load(file)
        else:
            emb = embed(sides, rows, name, cfg)
            cache.mkdir(parents=True, exist_ok=True)
            np.save(file, emb)
        metrics = shift_metrics(
            emb[in_reported], side[in_reported], labels[in_reported], groups[in_reported],
            classes, cfg.folds, cfg.seed,
        )  # fmt: skip
        report["encoders"][f"{label}: {name}"] = metrics
        xy = tsne_map(emb, cfg.perplexity, cfg.seed)
        png = out / f"map_{slug(label)}.png"
        title = f"{name}: domain AUC {metrics['domain_auc']}"
        plot_map(xy, side, labels, sides.names, title, png)
        report["maps"][f"{label}: {name}"] = png.name
        coords.append(
            pd.DataFrame({"encoder": name, "path": df["path"].astype(str).to_numpy(),
                          "side": side, "label": labels, "x": xy[:, 0], "y": xy[:, 1]})
        )  # fmt: skip
        log.info("%s: domain AUC %s", name, metrics["domain_auc"])
    pd.concat(coords).to_csv(out / "map_coordinates.csv", index=False)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    report["out_dir"] = str(out)
    return report
