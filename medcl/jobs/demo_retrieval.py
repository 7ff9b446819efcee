"""Demo stage "retrieval": a demonstration pool from source sites, k demonstrations per query.

Quick mode of ``medcl retrieval index`` + demonstration selection: a class-stratified subset of
the source-site images (HAM10000 body sites back/trunk/abdomen/chest with the real data, site
``site_a`` of a small class-folder stand-in without it) is embedded into a pool index
(:func:`medcl.retrieval.pool.build_pool_index`); a few target-site queries (lesions never in the
pool) each get their ``k`` demonstrations (:func:`medcl.retrieval.pool.select_demonstrations`).
Each query becomes one retrieval case whose predicted label is the k-NN vote of its
demonstrations (score = vote share; a tie is reported as ``"tie: a / b"`` with the tied
classes in ``artifacts.tie``, never broken silently; ``artifacts.classes`` lists the pool's
classes). When an OpenAI-compatible endpoint is configured
(``MEDCL_LMM_BASE_URL`` + ``MEDCL_LMM_MODEL``) the episode is also sent to the LMM and its parsed
answer stored as ``lmm_answer``; otherwise ``lmm_answer`` is null.

The default is the paper's method on offline weights: InvariantSelectPR (``selector:
invariant``) with EfficientNet-Lite0 ImageNet weights from pip
(``offline:efficientnet_lite0-imagenet``) fine-tuned with CCI on the pool for ``cci_steps``
steps (``cci/encoder.pt``). ``selector: topk`` uses the starting encoder as it is; ``random``
needs no encoder training.

Stage folder layout::

    pool.csv / queries.csv    the pool subset and the queries (manifests)
    cci/                      the CCI fine-tune of the encoder on the pool (invariant only)
    index/                    the pool index (``medcl retrieval index`` layout)
    lmm_cache/                cached LMM replies (only with an endpoint)
    predictions.jsonl         one retrieval case per query
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.io.image_selection import PatchDataConfig
from medcl.io.images import load_image_set
from medcl.models.encoders import PRETRAINED_ENCODER
from medcl.retrieval.pool import (
    PoolIndexConfig,
    build_pool_index,
    load_encoder,
    open_pool_index,
    select_demonstrations,
)
from medcl.retrieval.prompts import Demonstration
from medcl.retrieval.vote import majority_vote
from medcl.review.model_card import ModelCard
from medcl.review.predictions import PredictionRecord, artifact_ref, write_predictions
from medcl.workspace import data_path, slug

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["path", "label", "domain", "group"]


class RetrievalDemoConfig(StrictModel):
    """The retrieval stage (paths relative to the data root)."""

    images: Path = Path("ham10000")
    format: str = "ham10000"
    format_kwargs: dict[str, Any] = Field(default_factory=lambda: {"domain_column": "localization"})
    source_domains: list[str] = Field(default_factory=lambda: ["back", "trunk", "abdomen", "chest"])
    exclude_domains: list[str] = Field(default_factory=lambda: ["unknown"])
    pool_per_class: int = Field(default=40, ge=1)
    queries: int = Field(default=6, ge=1)
    k: int = Field(default=5, ge=1)
    selector: Literal["random", "topk", "invariant"] = "invariant"
    encoder: str = PRETRAINED_ENCODER
    cci_steps: int = Field(default=30, ge=1, description="CCI steps of the invariant selector")
    cci_trainable_blocks: int | None = Field(default=2, ge=1, description="last blocks CCI tunes")
    cci_batch_size: int = Field(default=32, ge=2)
    cci_lr: float = Field(default=1e-4, gt=0)
    image_size: int = Field(default=96, ge=32)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0


def train_demo_cci(cfg: RetrievalDemoConfig, pool: PatchDataConfig, out: Path, n_pool: int) -> Path:
    """Fine-tune ``cfg.encoder`` with CCI on the pool (InvariantSelectPR's encoder); its file.

    Batches hold at most the ``n_pool`` images of the pool.
    """
    from medcl.engine.trainer import TrainConfig
    from medcl.retrieval.cci_train import CCITrainConfig, run_train_cci

    cci = CCITrainConfig(
        data=pool,
        encoder=cfg.encoder,
        trainable_blocks=cfg.cci_trainable_blocks,
        views="dermoscopy",
        view_kwargs={"jitter": [0.3, 0.3, 0.2, 0.02], "grayscale_prob": 0.0},
        image_size=cfg.image_size,
        batch_size=max(2, min(cfg.cci_batch_size, n_pool)),
        lr=cfg.cci_lr,
        train=TrainConfig(
            max_steps=cfg.cci_steps,
            ckpt_every=0,
            keep_last=1,
            progress=False,
            tensorboard=False,
            seed=cfg.seed,
        ),
        out_dir=out,
    )
    return run_train_cci(cci).encoder


def split_pool_and_queries(
    df: pd.DataFrame, cfg: RetrievalDemoConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pool subset (source domains, at most ``pool_per_class`` per class) and the queries.

    Queries come from the other domains (minus ``exclude_domains``), never from a group (lesion)
    present in the pool, picked round-robin over classes (classes in sorted order, rows in a
    seeded random order) so that several classes are shown. Both keep the input's row order.
    """
    rng = np.random.default_rng(cfg.seed)
    in_source = df["domain"].isin(cfg.source_domains)
    source = df[in_source]
    if source.empty:
        raise InvalidInputError(cfg.images, f"no image of domains {cfg.source_domains}")
    picked = []
    for _, rows in source.groupby("label", sort=True):
        n = min(cfg.pool_per_class, len(rows))
        picked.extend(rng.choice(rows.index.to_numpy(), size=n, replace=False).tolist())
    pool = df.loc[sorted(picked)]
    target = df[~in_source & ~df["domain"].isin(cfg.exclude_domains)]
    target = target[~target["group"].isin(set(pool["group"]))]
    if target.empty:
        raise InvalidInputError(cfg.images, "no query image outside the source domains")
    by_class = {
        str(label): list(rng.permutation(rows.index.to_numpy()))
        for label, rows in target.groupby("label", sort=True)
    }
    chosen: list[Any] = []
    while len(chosen) < cfg.queries and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < cfg.queries:
                chosen.append(by_class[label].pop(0))
    return pool, df.loc[sorted(chosen)]


def write_synthetic_retrieval(folder: Path, seed: int = 0, per_class: int = 8) -> Path:
    """A ``<site>/<class>/*.png`` stand-in: three colour classes, ``site_b`` colour-shifted.

    Returns the folder (load it with format ``class_folders``, ``domain_level: true``).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (200, 60, 60), "green": (60, 180, 80), "blue": (60, 80, 200)}
    for site, shift in (("site_a", 0), ("site_b", 35)):
        for cls, colour in colours.items():
            sub = folder / site / cls
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.integers(-40, 40, size=(64, 64, 3))
                arr = np.clip(np.array(colour)[None, None] + shift + noise, 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(sub / f"{site}_{cls}_{i}.png")
    return folder


def _lmm_answers(
    out: Path, items: list[tuple[Path, list[Demonstration]]], labels: list[str]
) -> list[str | None]:
    """Ask the configured LMM about each episode; ``None`` for all without an endpoint."""
    from medcl.retrieval.lmm import LMMError
    from medcl.retrieval.lmm_eval import LMMArmConfig, client_from_config
    from medcl.retrieval.parse import UNPARSED, parse_label
    from medcl.retrieval.prompts import build_messages

    client = client_from_config(LMMArmConfig(), out / "lmm_cache")
    if client is None:
        return [None] * len(items)
    batch = [build_messages(q, demos, labels=labels, image_max_side=384) for q, demos in items]
    answers: list[str | None] = []
    for reply in client.complete_many(batch):
        if isinstance(reply, LMMError):
            log.warning("LMM request failed: %s", reply)
            answers.append(None)
            continue
        label = parse_label(reply.text, labels)
        answers.append(None if label == UNPARSED else label)
    return answers


def model_card(cfg: RetrievalDemoConfig, n_pool: int) -> ModelCard:
    """The card of the demo's k-NN vote over retrieved demonstrations (research only)."""
    how = "InvariantSelectPR (CCI-tuned encoder)" if cfg.selector == "invariant" else cfg.selector
    return ModelCard(
        display_name=f"{cfg.k}-nearest-demonstration vote, {how} (demo)",
        trained_on=(
            f"a pool of {n_pool} labelled images from the source sites "
            f"{', '.join(cfg.source_domains)} ({cfg.encoder} embeddings)"
        ),
        intended_use=(
            "Demonstrates in-context demonstration retrieval and the review workflow; the "
            "label is a vote of the retrieved images, not a diagnosis."
        ),
        research_only=True,
        uncertainty="1 - the share of the k demonstrations that vote for the predicted label",
    )


def run_retrieval_demo(cfg: RetrievalDemoConfig, out: Path, *, data_root: Path | None) -> Path:
    """Index the pool, select demonstrations, write ``out/predictions.jsonl``; returns it."""
    source = data_path(cfg.images, data_root, must_exist=False)  # the loader names what is missing
    ds = load_image_set(source, format=cfg.format, **cfg.format_kwargs)
    df = ds.df.reset_index(drop=True)
    pool, queries = split_pool_and_queries(df, cfg)
    pool[MANIFEST_COLUMNS].to_csv(out / "pool.csv", index=False)
    queries[MANIFEST_COLUMNS].to_csv(out / "queries.csv", index=False)
    log.info("retrieval pool: %d images, %d queries", len(pool), len(queries))

    pool_data = PatchDataConfig(path=out / "pool.csv", format="manifest", use="all", num_workers=0)
    encoder_name = cfg.encoder
    if cfg.selector == "invariant":
        encoder_name = f"medcl:{train_demo_cci(cfg, pool_data, out / 'cci', len(pool))}"
    torch.manual_seed(cfg.seed)  # the pool and the queries must see the same random weights
    index_dir = build_pool_index(
        PoolIndexConfig(
            name="pool",
            data=pool_data,
            encoder=encoder_name,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            out_dir=out / "index",
        )
    )
    torch.manual_seed(cfg.seed)
    encoder = load_encoder(encoder_name, cfg.image_size)
    index = open_pool_index(index_dir, encoder, encoder_name)
    labels = sorted(str(v) for v in set(pool["label"]))
    items = queries[MANIFEST_COLUMNS].astype(str).to_dict("records")
    picks = []
    for item in items:
        demos = select_demonstrations(
            index,
            encoder,
            Path(item["path"]),
            cfg.k,
            selector=cfg.selector,
            query_group=item["group"],
        )
        picks.append((Path(item["path"]), demos))
    answers = _lmm_answers(out, picks, labels)
    version = f"{cfg.selector}-k{cfg.k}-{index.fingerprint[:8]}"
    records = []
    for item, (query, demos), answer in zip(items, picks, answers, strict=True):
        vote = majority_vote([d.label for d in demos])
        records.append(
            PredictionRecord(
                case_key=f"retrieval:{slug(query.stem)}",
                kind="retrieval",
                model=f"knn-{slug(cfg.encoder)}",
                model_version=version,
                site=item["domain"],
                label=vote.label,
                scores=vote.scores,
                artifacts={
                    "query": artifact_ref(query, out),
                    "true_label": item["label"],
                    "classes": labels,
                    "tie": list(vote.tied) or None,
                    "demonstrations": [
                        {
                            "path": artifact_ref(d.image_path, out),
                            "label": d.label,
                            "similarity": d.similarity,
                            "domain": d.domain,
                        }
                        for d in demos
                    ],
                    "lmm_answer": answer,
                    "selector": cfg.selector,
                },
                model_card=model_card(cfg, len(pool)).to_json(),
            )
        )
    hits = sum(r.label == r.artifacts["true_label"] for r in records)
    log.info("retrieval: k-NN vote right on %d of %d queries", hits, len(records))
    return write_predictions(out / "predictions.jsonl", records)
