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
import os
import shutil
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
from medcl.errors import InvalidInputError
from medcl.eval.features import extract_features
from medcl.eval.metrics import classification_metrics
from medcl.eval.tables import mean_half_width, update_readme
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import ImageSet
from medcl.models.encoders import create_encoder
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
from medcl.retrieval.metrics import (
    class_agreement_at_k,
    knn_vote,
    macro_agreement_at_k,
    stack_selections,
)
from medcl.retrieval.prompts import Demonstration
from medcl.retrieval.selectors import Selection, create_selector
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir, slug

log = logging.getLogger(__name__)


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
    random_encoder: str | None = "timm:resnet18"
    image_size: int = Field(default=96, ge=16)
    max_per_class: int | None = None
    max_queries: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)
    cci: CCITrainConfig = Field(default_factory=CCITrainConfig)
    cci_budgets: list[int] | None = Field(
        default=None,
        description="candidate CCI step counts; the best on a lesion-grouped validation split "
        "of the pool (macro agreement@max(ks) of topk) is used (None: cci.train.max_steps)",
    )
    validation_size: float = Field(default=0.25, gt=0, lt=1)
    validation_seed: int = Field(default=0, description="split and CCI seed of the validation")
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
    macro_agreement: float = float("nan")  # agreement averaged per query class


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
    table = class_table(pool, queries)
    empty = table[(table["pool"] == 0) | (table["queries"] == 0)]
    if not empty.empty:
        detail = ", ".join(
            f"'{c}' ({r.pool} in the pool, {r.queries} queries)" for c, r in empty.iterrows()
        )
        raise InvalidInputError(
            cfg.data.path or "data.path",
            f"the domain split leaves class(es) empty on one side: {detail}; pick other "
            "source/target domains or leave the class out with data.classes + "
            "data.drop_unmapped=true",
        )
    return pool, queries


def class_table(pool: ImageSet, queries: ImageSet) -> pd.DataFrame:
    """Images per class in the pool and among the queries (rows: every class of the map)."""
    classes = sorted(pool.class_map, key=pool.class_map.__getitem__)
    return pd.DataFrame(
        {
            "pool": [int((pool.df["label"] == c).sum()) for c in classes],
            "queries": [int((queries.df["label"] == c).sum()) for c in classes],
        },
        index=pd.Index(classes, name="class"),
    )


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
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(cache)  # atomic: parallel runs of other seeds may write the same cache
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
    y = queries.labels
    picks: list[Selection] = []
    if selector == "majority":  # the baseline a micro-averaged agreement flatters
        majority = int(np.bincount(pool.labels).argmax())
        labels = np.full((len(y), max(ks)), majority, dtype=np.int64)
        scores = np.ones(labels.shape)
    else:
        base = {"random": "random", "invariant": "invariant"}.get(selector, "topk")
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
                macro_agreement_at_k(labels[:, :k], y),
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


def _cell(values: pd.Series) -> str:
    mean, half = mean_half_width(values.to_numpy())
    return f"{mean:.3f}" if np.isnan(half) else f"{mean:.3f} +- {half:.3f}"


def _table(rows: list[RetrievalRow], ks: Sequence[int]) -> str:
    """Headline: macro agreement and balanced k-NN accuracy at max(ks), mean +- 95% interval."""
    df = pd.DataFrame([r.__dict__ for r in rows])
    kmax = max(ks)
    lines = [
        f"| selector | macro agreement@{kmax} | k-NN balanced acc. (k={kmax}) | "
        f"agreement@{kmax} | k-NN acc. (k={kmax}) | "
        + " | ".join(f"macro agr.@{k}" for k in ks)
        + " |",
        "|" + " --- |" * (5 + len(ks)),
    ]
    for name, grp in df.groupby("selector", sort=False):
        top = grp[grp.k == kmax]
        per_k = " | ".join(f"{grp[grp.k == k].macro_agreement.mean():.3f}" for k in ks)
        lines.append(
            f"| {name} | {_cell(top.macro_agreement)} | {_cell(top.knn_balanced_accuracy)} | "
            f"{_cell(top.class_agreement)} | {_cell(top.knn_accuracy)} | {per_k} |"
        )
    n = df.seed.nunique()
    lines.append(f"\nmean +- half-width of the 95% t-interval over {n} seeds.")
    return "\n".join(lines) + "\n"


def _class_markdown(table: pd.DataFrame, source: str, target: str) -> str:
    lines = [f"| class | pool ({source}) | queries ({target}) |", "| --- | --- | --- |"]
    lines += [f"| {c} | {r.pool} | {r.queries} |" for c, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def _plot(rows: list[RetrievalRow], ks: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame([r.__dict__ for r in rows])
    metrics = ("macro_agreement", "knn_balanced_accuracy", "class_agreement")
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


def choose_budget(cfg: RetrievalEvalConfig, pool: ImageSet, out: Path, root: Path | None) -> int:
    """The CCI step count of ``cfg.cci_budgets`` with the best validation macro agreement.

    The pool is split by group (lesion), stratified by class; CCI (``cfg.validation_seed``) trains
    on one part for the smallest budget, then resumes to the next, and so on; after each budget
    the other part is queried against the training part with ``topk`` in the tuned space.
    Budget 0 is the starting encoder. Ties go to the smaller budget; ``validation.csv`` keeps
    every score.
    """
    from medcl.io.splits import group_split

    budgets = sorted(set(cfg.cci_budgets or []))
    split = group_split(
        pool.df["group"].to_numpy(),
        pool.labels,
        test_size=cfg.validation_size,
        seed=cfg.validation_seed,
    )
    train, val = pool.subset(split["train"]), pool.subset(split["test"])
    seed = cfg.validation_seed
    cci = cfg.cci.model_copy(deep=True)
    cci.encoder = cfg.encoder
    key = {"cci": output_settings(cci.model_dump(mode="json")), "start": _identity(cfg.encoder)}
    key["split"] = {"val": cfg.validation_size, "seed": seed, "n": len(pool)}
    folder = out / f"cci_validation_{settings_digest(key)}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "train.csv"
    train.df[["path", "label", "domain", "group"]].to_csv(manifest, index=False)
    cci.data = PatchDataConfig(path=manifest, format="manifest", use="all", num_workers=0)
    cci.data = cci.data.model_copy(
        update={"num_workers": cfg.data.num_workers, "classes": list(pool.classes)}
    )
    kmax = max(cfg.ks)
    scores: dict[int, float] = {}
    for b in budgets:
        name = cfg.encoder
        if b > 0:
            enc_file = folder / f"encoder_{b}.pt"
            if not enc_file.is_file():
                cci.out_dir = folder / "cci"
                cci.train = cfg.cci.train.model_copy(update={"seed": seed, "max_steps": b})
                res = run_train_cci(cci, data_root=root)
                shutil.copyfile(res.encoder, enc_file)
            name = f"medcl:{enc_file}"
        cache = folder / f"embeddings_{b}_px{cfg.image_size}.npz"
        train_emb, val_emb = _embed(name, [train, val], cfg, cache, seed)
        rows, _ = score_selector(
            "topk", train_emb, val_emb, train, val, [kmax], seed, cfg.max_per_class
        )
        scores[b] = rows[0].macro_agreement
        log.info("CCI budget %d: validation macro agreement@%d %.4f", b, kmax, scores[b])
    pd.DataFrame({"steps": list(scores), f"macro_agreement@{kmax}": list(scores.values())}).to_csv(
        out / "validation.csv", index=False
    )
    best = max(scores, key=lambda b: (round(scores[b], 4), -b))
    log.info("chosen CCI budget: %d steps", best)
    return best


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
    root = resolve_data_root(data_root)
    pool, queries = split_domains(load_filtered_image_set(cfg.data, root), cfg)
    log.info("pool: %d source images; queries: %d target images", len(pool), len(queries))
    rows: list[RetrievalRow] = []
    client = client_from_config(cfg.lmm, out / "lmm_cache")
    episodes: list[Episode] = []
    budget = cfg.cci.train.max_steps
    if cfg.cci_budgets:
        budget = choose_budget(cfg, pool, out, root)
    for seed in cfg.seeds:
        cci = cfg.cci.model_copy(deep=True)
        cci.encoder = cfg.encoder
        cci.data = cfg.data.model_copy(update={"domains": cfg.source_domains, "use": "all"})
        cci.train = cci.train.model_copy(update={"seed": seed, "max_steps": budget or 1})
        # named by its settings (and the starting weights): a changed recipe trains anew
        cci_settings = {
            "cci": output_settings(cci.model_dump(mode="json")),
            "start": _identity(cfg.encoder),
        }
        encoders = {"topk (random init)": cfg.random_encoder} if cfg.random_encoder else {}
        encoders["topk"] = cfg.encoder
        if budget:
            cci_dir = out / f"cci_seed{seed}_{settings_digest(cci_settings)}"
            if not (cci_dir / "encoder.pt").is_file():
                cci.out_dir = cci_dir
                run_train_cci(cci, data_root=root)
            encoders["invariant"] = f"medcl:{cci_dir / 'encoder.pt'}"
        else:  # validation preferred no CCI at all: InvariantSelectPR is TopKNearestPR here
            log.warning("validation chose 0 CCI steps: invariant uses the starting encoder")
            encoders["invariant"] = cfg.encoder
        embedded: dict[str, list[np.ndarray]] = {}
        for name, enc in encoders.items():
            key = {
                "encoder": _identity(enc),
                "image_size": cfg.image_size,
                "pool": pool.df["path"].astype(str).tolist(),
                "queries": queries.df["path"].astype(str).tolist(),
            }
            # weights from a file do not depend on the seed: one cache for every seed
            fixed = enc.startswith(("medcl:", "offline:"))
            tag = slug(name) if fixed else f"{slug(name)}_seed{seed}"
            cache = out / "embeddings" / f"{tag}_{settings_digest(key)}.npz"
            embedded[name] = _embed(enc, [pool, queries], cfg, cache, seed)
        for name in ("random", "majority", *encoders):
            pool_emb, query_emb = embedded["topk" if name in ("random", "majority") else name]
            scored, picks = score_selector(
                name, pool_emb, query_emb, pool, queries, cfg.ks, seed, cfg.max_per_class
            )
            rows += scored
            if client is not None and seed in cfg.lmm.seeds:
                episodes += lmm_episodes(name, picks, pool, queries, cfg.lmm, seed)
    table = _table(rows, cfg.ks)
    source = "+".join(cfg.source_domains)
    target = "+".join(cfg.target_domains) if cfg.target_domains else "other domains"
    table += "\n" + _class_markdown(class_table(pool, queries), source, target)
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
            f"source images, {len(queries)} target queries; encoder {cfg.encoder}, CCI "
            f"{budget} steps{' (chosen by validation)' if cfg.cci_budgets else ''}."
        )
        # one marker pair per protocol: <!-- retrieval:start --> for the config named retrieval
        markers = (f"<!-- {cfg.name}:start -->", f"<!-- {cfg.name}:end -->")
        update_readme(readme, table, note, markers=markers)
    return rows, table
