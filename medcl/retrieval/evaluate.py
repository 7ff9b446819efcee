"""``medcl retrieval eval``: RandomPR vs TopKNearestPR vs InvariantSelectPR under domain shift.

Protocol (the paper's, as a tool): the pool is the labelled images of the *source* domains
(e.g. HAM10000 body sites back, trunk, abdomen, chest), the queries the images of the *target*
domains; a group (lesion, patient, slide) never appears on both sides. For every seed:

* ``random``: RandomPR over the pool;
* ``topk (random init)``: nearest neighbours with a randomly initialised encoder;
* ``topk``: TopKNearestPR with the frozen starting encoder (e.g. our SimCLR checkpoint);
* ``invariant``: InvariantSelectPR with that encoder fine-tuned by CCI on the pool.

For k in ``ks``: class agreement@k (share of demonstrations of the query's class), k-NN vote
accuracy and balanced accuracy. Embeddings are cached per encoder and seed, so an interrupted run
resumes; cache files and CCI folders are named by a digest of their settings (encoder name and
weights sha256, image size, pool and query paths; the CCI recipe), so a changed setting never
reuses them. Results: ``results.csv``, ``results.md`` (and the README between markers), a plot
of each metric against k per selector, and the resolved config.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.engine.checkpoint import file_sha256
from medcl.engine.stamps import output_settings, settings_digest
from medcl.io.images import ImageSet
from medcl.models.encoders import create_encoder
from medcl.pretrain.evaluate import update_readme
from medcl.pretrain.patch_data import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.pretrain.probe import classification_metrics, extract_features
from medcl.retrieval.cci_train import CCITrainConfig, run_train_cci
from medcl.retrieval.lmm_eval import (
    ANSWERS_FILE,
    ZERO_SHOT,
    Episode,
    LMMArmConfig,
    client_from_config,
    lmm_table,
    run_lmm_arm,
    summarise,
)
from medcl.retrieval.metrics import class_agreement_at_k, knn_vote, stack_selections
from medcl.retrieval.prompts import Demonstration
from medcl.retrieval.selectors import Selection, create_selector
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir, slug

log = logging.getLogger(__name__)

MARKERS = ("<!-- retrieval:start -->", "<!-- retrieval:end -->")


class RetrievalEvalConfig(StrictModel):
    """The demonstration-retrieval evaluation under a domain shift."""

    name: str = "retrieval"
    data: PatchDataConfig = Field(default_factory=PatchDataConfig)
    source_domains: list[str] = Field(default_factory=list)
    target_domains: list[str] | None = None
    exclude_domains: list[str] = Field(default_factory=lambda: ["unknown"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    ks: list[int] = Field(default_factory=lambda: [1, 3, 5, 7])
    encoder: str = "timm:resnet18"
    random_encoder: str = "timm:resnet18"
    image_size: int = Field(default=96, ge=16)
    max_per_class: int | None = None
    max_queries: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)
    cci: CCITrainConfig = Field(default_factory=CCITrainConfig)
    lmm: LMMArmConfig = Field(default_factory=LMMArmConfig)
    out_dir: Path | None = None


@dataclass(frozen=True)
class RetrievalRow:
    """One selector, seed and k."""

    selector: str
    seed: int
    k: int
    class_agreement: float
    knn_accuracy: float
    knn_balanced_accuracy: float


def split_domains(ds: ImageSet, cfg: RetrievalEvalConfig) -> tuple[ImageSet, ImageSet]:
    """(pool, queries): source vs target domains, no group on both sides."""
    if not cfg.source_domains:
        raise ValueError("source_domains is empty: name the pool's domains")
    domain = ds.df["domain"].astype(str)
    keep = ~domain.isin(cfg.exclude_domains)
    is_source = domain.isin(cfg.source_domains) & keep
    is_target = (domain.isin(cfg.target_domains) if cfg.target_domains else ~is_source) & keep
    pool = ds.subset(np.flatnonzero(is_source.to_numpy()))
    pool_groups = set(pool.df["group"].astype(str))
    target = is_target & ~ds.df["group"].astype(str).isin(pool_groups)
    queries = ds.subset(np.flatnonzero(target.to_numpy()))
    if cfg.max_queries is not None and len(queries) > cfg.max_queries:
        rng = np.random.default_rng(0)
        queries = queries.subset(np.sort(rng.choice(len(queries), cfg.max_queries, False)))
    return pool, queries


def _identity(encoder: str) -> dict[str, str | None]:
    """An encoder name and, for a ``medcl:`` file, the sha256 of its weights."""
    path = Path(encoder.removeprefix("medcl:"))
    sha = file_sha256(path) if encoder.startswith("medcl:") and path.is_file() else None
    return {"name": encoder, "sha256": sha}


def _embed(
    name: str, parts: Sequence[ImageSet], cfg: RetrievalEvalConfig, cache: Path, seed: int
) -> list[np.ndarray]:
    if cache.is_file():
        with np.load(cache) as saved:
            return [saved[f"part{i}"] for i in range(len(parts))]
    torch.manual_seed(seed)  # random-init encoders are seeded
    encoder = create_encoder(name)
    size = (cfg.image_size, cfg.image_size)
    encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
    out = []
    for part in parts:
        loader = DataLoader(
            ImageViewsDataset(part, encoder.eval_transform),
            batch_size=cfg.batch_size,
            num_workers=cfg.data.num_workers,
        )
        out.append(extract_features(encoder, loader, progress=False)[0])
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"part{i}": x for i, x in enumerate(out)}
    np.savez(cache, **arrays)  # type: ignore[arg-type]
    return out


def score_selector(
    selector: str,
    pool_emb: np.ndarray,
    query_emb: np.ndarray,
    pool: ImageSet,
    queries: ImageSet,
    ks: Sequence[int],
    seed: int,
    max_per_class: int | None,
) -> tuple[list[RetrievalRow], list[Selection]]:
    """Select ``max(ks)`` demonstrations per query and score every prefix ``k``.

    Returns the rows and each query's selection (for the LMM arm).
    """
    base = (
        "random" if selector == "random" else ("invariant" if selector == "invariant" else "topk")
    )
    sel = create_selector(base, max_per_class=max_per_class)
    meta = pool.df[["label", "domain", "group"]].reset_index(drop=True)
    meta = meta.assign(label=pool.labels)
    picks = sel.select(
        query_emb,
        pool_emb,
        meta,
        max(ks),
        query_group=list(queries.df["group"].astype(str)),
        rng=np.random.default_rng(seed),
    )
    labels, scores = stack_selections(picks, pool.labels, max(ks))
    y = queries.labels
    rows = []
    for k in ks:
        pred = knn_vote(labels[:, :k], scores[:, :k], len(pool.class_map), weighted=False)
        m = classification_metrics(y, pred, len(pool.class_map))
        rows.append(
            RetrievalRow(
                selector,
                seed,
                k,
                class_agreement_at_k(labels[:, :k], y),
                m["accuracy"],
                m["balanced_accuracy"],
            )
        )
    return rows, picks


def lmm_episodes(
    selector: str,
    picks: Sequence[Selection],
    pool: ImageSet,
    queries: ImageSet,
    cfg: LMMArmConfig,
    seed: int,
) -> list[Episode]:
    """The LMM arm's episodes of one selector (and the zero-shot ones, with ``random``).

    The same ``cfg.max_queries`` queries (fixed by seed 0) are asked for every selector and k.
    """
    if selector not in cfg.selectors and selector != "random":
        return []
    n = len(queries)
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(n, min(n, cfg.max_queries), replace=False))
    paths, classes = pool.df["path"].astype(str).to_numpy(), pool.df["label"].astype(str)
    domains = pool.df["domain"].astype(str).to_numpy()
    q_paths, q_labels = queries.df["path"].astype(str), queries.df["label"].astype(str)
    out: list[Episode] = []
    for i in chosen:
        query, truth = Path(q_paths.iloc[i]), str(q_labels.iloc[i])
        if selector == "random":
            out.append(Episode(seed, ZERO_SHOT, 0, query, truth, ()))
            if "random" not in cfg.selectors:
                continue
        pick = picks[i]
        demos = tuple(
            Demonstration(Path(paths[j]), str(classes.iloc[j]), float(s), str(domains[j]))
            for j, s in zip(pick.indices, pick.scores, strict=True)
        )
        out += [Episode(seed, selector, k, query, truth, demos[:k]) for k in cfg.ks]
    return out


def _table(rows: list[RetrievalRow], ks: Sequence[int]) -> str:
    df = pd.DataFrame([r.__dict__ for r in rows])
    kmax = max(ks)
    lines = [
        f"| selector | class agreement@{kmax} | k-NN balanced acc. (k={kmax}) | "
        f"k-NN acc. (k={kmax}) | " + " | ".join(f"agreement@{k}" for k in ks) + " |",
        "|" + " --- |" * (4 + len(ks)),
    ]
    for name, grp in df.groupby("selector", sort=False):
        top = grp[grp.k == kmax]

        def cell(values: pd.Series) -> str:
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            return f"{values.mean():.3f} +- {std:.3f}"

        per_k = " | ".join(f"{grp[grp.k == k].class_agreement.mean():.3f}" for k in ks)
        lines.append(
            f"| {name} | {cell(top.class_agreement)} | "
            f"{cell(top.knn_balanced_accuracy)} | {cell(top.knn_accuracy)} | {per_k} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[RetrievalRow], ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame([r.__dict__ for r in rows])
    metrics = ("class_agreement", "knn_balanced_accuracy", "knn_accuracy")
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3.8))
    for ax, metric in zip(axes, metrics, strict=True):
        for name, grp in df.groupby("selector", sort=False):
            mean = grp.groupby("k")[metric].mean().reindex(list(ks))
            std = grp.groupby("k")[metric].std().reindex(list(ks)).fillna(0)
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=name)
        ax.set_xlabel("k")
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xticks(list(ks))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_lmm(summary: pd.DataFrame, path: Path) -> None:
    """LMM accuracy against k per selector, the zero-shot baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary.empty:
        return
    fig, ax = plt.subplots(figsize=(5, 3.8))
    zero = summary[summary.selector == ZERO_SHOT]
    for name, grp in summary[summary.selector != ZERO_SHOT].groupby("selector", sort=False):
        by_k = grp.groupby("k").lmm_accuracy
        ax.errorbar(
            by_k.mean().index,
            by_k.mean(),
            yerr=by_k.std().fillna(0),
            marker="o",
            capsize=3,
            label=str(name),
        )
    if not zero.empty:
        ax.axhline(float(zero.lmm_accuracy.mean()), ls="--", c="grey", label="zero-shot")
    ax.set_xlabel("k demonstrations")
    ax.set_ylabel("LMM accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_retrieval_eval(
    cfg: RetrievalEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[RetrievalRow], str]:
    """Run the protocol for every seed; returns the rows and the markdown table."""
    out = job_dir(cfg.out_dir, workspace, "eval", cfg.name)
    save_config(cfg, out)
    root = data_root or resolve_data_root()
    pool, queries = split_domains(load_filtered_image_set(cfg.data, root), cfg)
    log.info("pool: %d source images; queries: %d target images", len(pool), len(queries))
    rows: list[RetrievalRow] = []
    client = client_from_config(cfg.lmm, out / "lmm_cache")
    episodes: list[Episode] = []
    for seed in cfg.seeds:
        cci = cfg.cci.model_copy(deep=True)
        cci.encoder = cfg.encoder
        cci.data = cfg.data.model_copy(update={"domains": cfg.source_domains, "use": "all"})
        cci.train = cci.train.model_copy(update={"seed": seed})
        # named by its settings (and the starting weights): a changed recipe trains anew
        cci_settings = {
            "cci": output_settings(cci.model_dump(mode="json")),
            "start": _identity(cfg.encoder),
        }
        cci_dir = out / f"cci_seed{seed}_{settings_digest(cci_settings)}"
        if not (cci_dir / "encoder.pt").is_file():
            cci.out_dir = cci_dir
            run_train_cci(cci, data_root=root)
        encoders = {
            "topk (random init)": cfg.random_encoder,
            "topk": cfg.encoder,
            "invariant": f"medcl:{cci_dir / 'encoder.pt'}",
        }
        embedded: dict[str, list[np.ndarray]] = {}
        for name, enc in encoders.items():
            key = {
                "encoder": _identity(enc),
                "image_size": cfg.image_size,
                "pool": pool.df["path"].astype(str).tolist(),
                "queries": queries.df["path"].astype(str).tolist(),
            }
            cache = out / "embeddings" / f"{slug(name)}_seed{seed}_{settings_digest(key)}.npz"
            embedded[name] = _embed(enc, [pool, queries], cfg, cache, seed)
        for name in ("random", *encoders):
            pool_emb, query_emb = embedded["topk" if name == "random" else name]
            scored, picks = score_selector(
                name, pool_emb, query_emb, pool, queries, cfg.ks, seed, cfg.max_per_class
            )
            rows += scored
            if client is not None and seed in cfg.lmm.seeds:
                episodes += lmm_episodes(name, picks, pool, queries, cfg.lmm, seed)
    table = _table(rows, cfg.ks)
    if client is not None:
        answers = run_lmm_arm(episodes, pool.classes, client, out / ANSWERS_FILE, cfg.lmm)
        summary = summarise(answers)
        summary.to_csv(out / "lmm_results.csv", index=False)
        table += "\n" + lmm_table(summary)
        _plot_lmm(summary, out / "lmm_results.png")
    (out / "results.md").write_text(table)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RetrievalRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(r.__dict__ for r in rows)
    _plot(rows, cfg.ks, out / "results.png")
    if readme is not None:
        note = (
            f"Produced by `medcl retrieval eval` (seeds {cfg.seeds}): pool {len(pool)} "
            f"source images, {len(queries)} target queries."
        )
        update_readme(readme, table, note, markers=MARKERS)
    return rows, table
