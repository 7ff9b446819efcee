"""A demonstration pool on disk: embed it once (``medcl retrieval index``), then select and prompt.

``build_pool_index`` embeds a labelled image set with a registry encoder and saves a
:class:`~medcl.retrieval.index.DemoIndex` whose fingerprint ties it to that encoder (name, weights
sha256, eval transform) and pool. ``open_pool_index`` refuses it when used with another encoder
or when the caller's current pool (re-listed from the data, not read from the index) differs.
``select_demonstrations`` embeds a query image and returns its k demonstrations, ready for
:func:`~medcl.retrieval.prompts.build_messages`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import RESOLVED_CONFIG_NAME, StrictModel, load_config, save_config
from medcl.errors import InvalidInputError
from medcl.eval.features import extract_features
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import read_image
from medcl.models.encoder_base import Encoder
from medcl.models.encoders import create_encoder
from medcl.retrieval.index import DemoIndex, IndexSource
from medcl.retrieval.prompts import Demonstration
from medcl.retrieval.selectors import create_selector
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)

#: Reviewed cases added to an index (``medcl retrieval index --add-reviewed``), beside it.
REVIEWED_FILE = "reviewed.csv"
PROVENANCE_COLUMNS = ("source", "case_key", "review_id", "reviewer", "reviewed_at", "decision")
REVIEWED_COLUMNS = ("path", "label", "domain", "group", *PROVENANCE_COLUMNS[1:])


class PoolIndexConfig(StrictModel):
    """Options of ``medcl retrieval index``."""

    name: str = "pool"
    data: PatchDataConfig = Field(default_factory=lambda: PatchDataConfig(use="all"))
    encoder: str = "timm:resnet18"
    image_size: int | None = Field(default=None, ge=16)
    kind: Literal["exact", "hnsw", "ivf"] = "exact"
    options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=128, ge=1)
    out_dir: Path | None = None


def load_encoder(name: str, image_size: int | None) -> Encoder:
    """A registry encoder, evaluated at ``image_size`` when given."""
    encoder = create_encoder(name)
    if image_size is not None:
        encoder.set_spec(replace(encoder.spec, size=(image_size, image_size), crop_pct=1.0))
    return encoder.eval()


def encoder_source(encoder: Encoder, name: str) -> IndexSource:
    """What ``encoder`` contributes to a fingerprint: name, weights sha256, eval transform."""
    sha = encoder.provenance.get("sha256") if isinstance(encoder.provenance, dict) else None
    return IndexSource(encoder=name, encoder_sha256=sha, transform=encoder.spec.to_dict())


def encoder_fingerprint(encoder: Encoder, name: str, pool_paths: list[str]) -> str:
    """The fingerprint of ``encoder`` (name, weights sha256, transform) over ``pool_paths``."""
    return encoder_source(encoder, name).fingerprint(pool_paths)


def pool_paths(cfg: PoolIndexConfig, data_root: Path | None) -> list[str]:
    """The image paths of the pool ``cfg`` describes, listed from the data as it is now."""
    pool = load_filtered_image_set(cfg.data, resolve_data_root(data_root))
    return [str(p) for p in pool.df["path"]]


def read_reviewed(folder: Path) -> list[dict[str, str]]:
    """The rows of ``reviewed.csv`` in an index folder (none when absent).

    Raises:
        InvalidInputError: the file lacks one of :data:`REVIEWED_COLUMNS`.
    """
    path = Path(folder) / REVIEWED_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REVIEWED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInputError(path, f"lacks column(s) {', '.join(missing)}")
        return list(reader)


def current_pool_paths(folder: Path, data_root: Path | None = None) -> list[str]:
    """The pool an index folder was built from, re-listed from the data as it is now.

    Reads the index's saved ``config.yaml`` (its data settings, the path resolved when the
    index was built; ``data_root`` serves older relative ones) and lists the images again, so
    images added to or removed from the image set since the index was built show up as a
    fingerprint mismatch. The reviewed cases added to the index (``reviewed.csv``, see
    :mod:`medcl.retrieval.reviewed`) are part of the pool while their image files exist.

    Raises:
        InvalidInputError: no saved config in ``folder`` (not made by ``retrieval index``).
    """
    config = Path(folder) / RESOLVED_CONFIG_NAME
    if not config.is_file():
        raise InvalidInputError(
            folder, f"no {RESOLVED_CONFIG_NAME}: cannot list the pool it was built from"
        )
    reviewed = [r["path"] for r in read_reviewed(folder) if Path(r["path"]).is_file()]
    return pool_paths(load_config(PoolIndexConfig, config), data_root) + reviewed


def build_pool_index(
    cfg: PoolIndexConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> Path:
    """Embed the pool and save the index folder; returns it."""
    out = job_dir(cfg.out_dir, workspace, "retrieval_index", cfg.name)
    root = resolve_data_root(data_root)
    path = cfg.data.path
    if path is not None and not path.is_absolute() and root is not None:
        # saved resolved: a later query re-lists this pool without being told the data root
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": root / path})})
    save_config(cfg, out)
    pool = load_filtered_image_set(cfg.data, root)
    encoder = load_encoder(cfg.encoder, cfg.image_size)
    loader = DataLoader(
        ImageViewsDataset(pool, encoder.eval_transform),
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
    )
    emb, _ = extract_features(encoder, loader)
    meta = pool.df.reset_index(drop=True).assign(path=lambda d: d["path"].astype(str))
    source = encoder_source(encoder, cfg.encoder)
    index = DemoIndex.build(emb, meta, kind=cfg.kind, source=source, **cfg.options)
    index.save(out)
    log.info(
        "indexed %d images (%s, fingerprint %s) in %s", len(meta), cfg.kind, index.fingerprint, out
    )
    return out


def open_pool_index(
    folder: Path, encoder: Encoder, encoder_name: str, pool: list[str] | None = None
) -> DemoIndex:
    """Load an index folder, refusing it if it was built with another encoder or pool.

    ``pool`` is the caller's current pool (image paths); ``None`` re-lists it from the data
    with the index's saved data settings (:func:`current_pool_paths`). Never the index's own
    metadata, which would always agree with itself.
    """
    paths = current_pool_paths(folder) if pool is None else pool
    expected = encoder_fingerprint(encoder, encoder_name, paths)
    return DemoIndex.load(folder, expected_fingerprint=expected)


MIN_QUERY_SIDE = 32
_SINGLE_CHANNEL = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})


def read_query_image(path: Path, *, min_side: int = MIN_QUERY_SIDE) -> np.ndarray:
    """A query image as ``(H, W, 3)`` uint8, refusing what the colour pool cannot answer.

    Palette, RGBA and CMYK images are converted to RGB. Refused with an error naming the file:
    single-channel (greyscale) images, since the pool and its encoder are colour and a silent
    channel copy would retrieve by brightness alone; images of more than four bands; and images
    whose shorter side is under ``min_side`` pixels, which the encoder would upsample into mush.
    """
    from PIL import Image

    image = read_image(path)  # missing, empty, corrupt or not an image: its own clear error
    with Image.open(path) as img:
        mode, bands = img.mode, len(img.getbands())
    if mode in _SINGLE_CHANNEL:
        raise InvalidInputError(
            path,
            f"query has 1 channel (mode {mode}) but the pool holds RGB colour images; "
            "convert it to RGB first if a greyscale query is really intended",
        )
    if bands > 4:
        raise InvalidInputError(path, f"query has {bands} channels; expected RGB (3)")
    h, w = image.shape[:2]
    if min(h, w) < min_side:
        raise InvalidInputError(
            path, f"query is {w}x{h} px; its shorter side must be at least {min_side} px"
        )
    return image


def select_demonstrations(
    index: DemoIndex,
    encoder: Encoder,
    query: Path,
    k: int,
    *,
    selector: str = "topk",
    query_group: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> list[Demonstration]:
    """The ``k`` demonstrations for ``query`` (an image file) from the indexed pool."""
    image = read_query_image(query)
    x = encoder.eval_transform(image)[None]
    q = extract_features(encoder, [(x, np.zeros(1, np.int64))], progress=False)[0][0]
    meta = index.metadata
    fetch = min(len(index), max(k * 20, 100))
    scores, ids = index.search(q[None], fetch)
    sel = create_selector(selector, max_per_class=max_per_class)
    kwargs: dict[str, Any] = {} if selector == "random" else {"candidates": (scores, ids)}
    labels = meta.assign(label=meta["label"].astype(str))
    # the index holds the vectors: topk / invariant select among its candidates, random
    # needs no similarity (reported as None)
    pool_emb = np.zeros((len(index), index.dim), np.float32)
    picked = sel.select(
        q, pool_emb, labels, k, query_group=query_group, rng=np.random.default_rng(seed), **kwargs
    )[0]
    return [
        Demonstration(
            Path(str(meta.loc[i, "path"])),
            str(meta.loc[i, "label"]),
            None if selector == "random" else float(s),
            str(meta.loc[i, "domain"]) if "domain" in meta else None,
        )
        for i, s in zip(picked.indices, picked.scores, strict=True)
    ]
