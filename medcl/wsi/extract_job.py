"""``medcl wsi extract``: features of every tiled slide of a job folder, resumable, multi-GPU.

For each ``<job>/patches/<stem>.h5`` it writes ``<job>/features_<settings>/<stem>.h5`` (see
:mod:`medcl.wsi.features`), skipping finished bags. The folder is named by every setting that
changes the features (:func:`feature_settings`: the encoder, the sha256 of its weights, the input
size, the precision, the seed of random weights, builder options), TRIDENT-style, and those
settings are stored in it (``settings.json``): a re-run with other weights or another size writes
a new folder, and a folder whose stored settings differ is refused with both named, never
reported "already complete". a slide that fails is logged, recorded
in ``status.csv`` and the others go on. Under torchrun the slides are sharded over the ranks
(rank ``r`` takes slides ``r, r + W, ...``), each rank writes its own files and rank 0 writes the
status table after a barrier; started as a plain process it runs alone.

Slides are found by file stem in ``slides`` (a folder, searched recursively, or a CSV with a
``slide`` column and an optional ``mpp`` one, read by :func:`medcl.wsi.jobs.list_slides`), else in
the ``slides`` entry of the tiling job's ``config.yaml``, else at the ``slide`` attr of the coords
file when it is an existing path. An empty coords file gives an empty bag without its slide.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import torch
import yaml
from pydantic import Field
from tqdm.auto import tqdm

from medcl.config import StrictModel, save_config
from medcl.engine.distributed import all_gather_object, barrier, cleanup, init_distributed
from medcl.engine.stamps import check_stamp, settings_digest, write_stamp
from medcl.errors import ConfigError, InvalidInputError, MedclError
from medcl.models.encoders import Encoder, create_encoder
from medcl.workspace import slug
from medcl.wsi.coords_io import read_coords
from medcl.wsi.features import Precision, extract_features, is_complete
from medcl.wsi.jobs import SLIDE_EXTENSIONS, list_slides

logger = logging.getLogger(__name__)

STATUS_FIELDS = ("slide", "state", "n_tiles", "seconds", "message")


class ExtractConfig(StrictModel):
    """Options of ``medcl wsi extract`` (``configs/wsi/extract.yaml``)."""

    job: Path = Field(description="tiling job folder (the one holding patches/)")
    encoder: str = Field(description="registry encoder name, e.g. timm:resnet50")
    pretrained: bool | str = False
    weights: Path | None = None
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int | None = Field(default=None, ge=1, description="override the input size")
    slides: Path | None = Field(default=None, description="slide folder or CSV (slide[,mpp])")
    batch_size: int = Field(default=64, ge=1)
    num_workers: int = Field(default=4, ge=0)
    device: str = "auto"
    precision: Precision = "fp32"
    flush_every: int = Field(default=8, ge=1)
    seed: int = Field(default=0, description="seeds randomly initialised weights (same on ranks)")


@dataclass(frozen=True)
class SlideStatus:
    """One row of ``status.csv``; ``new_tiles`` counts tiles encoded in this run."""

    slide: str
    state: str  # ok | failed | empty
    n_tiles: int
    seconds: float
    message: str = ""
    new_tiles: int = 0


def resolve_job(job: str | Path) -> Path:
    """The folder holding ``patches/``: ``job`` itself or its only settings sub-folder."""
    root = Path(job)
    if (root / "patches").is_dir():
        return root
    if root.is_dir():
        found = sorted(p.parent for p in root.glob("*/patches") if p.is_dir())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise InvalidInputError(root, f"several tiling settings ({names}); pass one of them")
    raise InvalidInputError(root, "not a tiling job folder (no patches/ inside; run `wsi tile`)")


def _slides_from(source: Path, extensions: list[str]) -> dict[str, tuple[Path, float | None]]:
    if source.is_file() and source.suffix.lower() != ".csv":
        raise InvalidInputError(source, "slides must be a folder of slides or a CSV file")
    return {e.path.stem: (e.path, e.mpp) for e in list_slides(source, extensions)}


def slide_index(job: Path, slides: Path | None) -> dict[str, tuple[Path, float | None]]:
    """``stem -> (slide path, mpp or None)`` from ``slides`` or the tiling job's config.yaml
    (its ``slides`` and ``extensions`` entries)."""
    data: Any = {}
    config = job / "config.yaml"
    if config.is_file():
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    data = data if isinstance(data, dict) else {}
    extensions = list(data.get("extensions") or SLIDE_EXTENSIONS)
    if slides is not None:
        return _slides_from(slides, extensions)
    source = data.get("slides")
    if source and Path(str(source)).exists():
        return _slides_from(Path(str(source)), extensions)
    return {}


def _find_slide(
    coords_path: Path, index: dict[str, tuple[Path, float | None]]
) -> tuple[Path, float | None]:
    if coords_path.stem in index:
        return index[coords_path.stem]
    with h5py.File(coords_path, "r") as f:
        name = f["coords"].attrs.get("slide") if "coords" in f else None
    if isinstance(name, bytes):
        name = name.decode()
    if name and Path(str(name)).is_file():
        return Path(str(name)), None
    raise InvalidInputError(
        coords_path, "cannot find its slide; pass --slides FOLDER_or_CSV (slides named by stem)"
    )


def build_encoder(cfg: ExtractConfig) -> Encoder:
    """The configured encoder; randomly initialised weights come from ``cfg.seed``.

    Tiles are cut at the encoder's input size (or ``cfg.image_size``) and fed whole: the
    preprocessing keeps the encoder's normalisation and interpolation but no centre crop
    (``crop_pct=1.0``). A library's eval transform for photographs (timm's resnet18: resize to
    256, crop 224) would resample every tile and drop its outer 12.5% on each side, so tissue at
    a tile's border would never be seen; CLAM feeds its 224 px tiles whole too. The spec used is
    in the feature settings, so a changed transform gets its own folder.
    """
    torch.manual_seed(cfg.seed)
    try:
        encoder = create_encoder(
            cfg.encoder, pretrained=cfg.pretrained, weights=cfg.weights, **cfg.encoder_kwargs
        )
    except ValueError as exc:  # unknown name or option: a config problem, shown in one line
        raise ConfigError("encoder", "encoder", str(exc)) from None
    size = encoder.spec.size if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
    return encoder


def feature_settings(cfg: ExtractConfig, encoder: Encoder) -> dict[str, Any]:
    """Every setting that changes the features, as plain values (stored in ``settings.json``).

    ``weights_sha256`` is the digest of the loaded weights (a ``--weights`` file or an offline
    source), ``None`` for random or library-downloaded weights; ``seed`` counts only for random
    weights (``None`` otherwise).
    """
    sha = encoder.provenance.get("sha256") if isinstance(encoder.provenance, dict) else None
    random_init = not sha and not cfg.pretrained
    return {
        "encoder": encoder.name,
        "pretrained": cfg.pretrained,
        "weights_sha256": sha,
        "transform": encoder.spec.to_dict(),
        "precision": cfg.precision,
        "seed": cfg.seed if random_init else None,
        "encoder_kwargs": json.loads(json.dumps(cfg.encoder_kwargs, sort_keys=True, default=str)),
    }


def features_dir(job: Path, settings: dict[str, Any]) -> Path:
    """``<job>/features_<encoder>[_w<sha8>]_px<size>_<precision>[_seed<n>][_k<hash8>]``.

    The name holds what a person would check first; ``_k<hash8>`` digests the remaining
    settings (pretrained tag, transform, builder options) so that no two settings share a name.
    """
    size = settings["transform"]["size"]
    parts = [f"features_{slug(str(settings['encoder']), 60)}"]
    if settings["weights_sha256"]:
        parts.append(f"w{str(settings['weights_sha256'])[:8]}")
    parts.append(f"px{size[0]}" if size[0] == size[1] else f"px{size[0]}x{size[1]}")
    parts.append(str(settings["precision"]))
    if settings["seed"] is not None:
        parts.append(f"seed{settings['seed']}")
    rest = {k: settings[k] for k in ("pretrained", "transform", "encoder_kwargs")}
    parts.append("k" + settings_digest(rest))
    return job / "_".join(parts)


def _one_slide(
    coords_path: Path,
    out_dir: Path,
    encoder: Encoder,
    cfg: ExtractConfig,
    index: dict[str, tuple[Path, float | None]],
    device: torch.device,
) -> SlideStatus:
    stem = coords_path.stem
    out = out_dir / f"{stem}.h5"
    if is_complete(out):
        with h5py.File(out, "r") as f:
            n = int(f["features"].shape[0])
        return SlideStatus(stem, "ok" if n else "empty", n, 0.0, "already complete")
    start = time.perf_counter()
    try:
        if len(read_coords(coords_path)) == 0:  # an empty bag needs no slide
            slide, mpp = Path(stem), None
        else:
            slide, mpp = _find_slide(coords_path, index)
        res = extract_features(
            slide,
            coords_path,
            out,
            encoder,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            device=device,
            precision=cfg.precision,
            flush_every=cfg.flush_every,
            mpp=mpp,
        )
    except Exception as exc:  # one bad slide must not stop the others
        if isinstance(exc, MedclError):
            logger.error("%s: failed: %s", stem, exc)
        else:
            logger.exception("%s: failed", stem)
        return SlideStatus(stem, "failed", 0, time.perf_counter() - start, str(exc))
    state = "ok" if res.n_tiles else "empty"
    return SlideStatus(stem, state, res.n_tiles, res.seconds, "", res.n_new)


def _write_status(path: Path, rows: list[SlideStatus]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(STATUS_FIELDS)
        for r in sorted(rows, key=lambda r: r.slide):
            writer.writerow([r.slide, r.state, r.n_tiles, f"{r.seconds:.2f}", r.message])
    tmp.replace(path)


def run_extract_job(cfg: ExtractConfig) -> dict[str, Any]:
    """Extract features for every coords file of ``cfg.job``; returns the run's summary.

    The summary (the same on every rank) has ``out_dir``, ``encoder``, ``slides``, counts by
    state, ``skipped`` (already complete), ``tiles`` (encoded in this run), ``seconds`` (wall
    time) and ``tiles_per_s``, plus ``failures`` ``{stem: message}``.
    """
    info = init_distributed(cfg.device)
    try:
        job = resolve_job(cfg.job)
        coords_files = sorted(
            p for p in (job / "patches").glob("*.h5") if not p.name.endswith(".partial.h5")
        )
        if not coords_files:
            raise InvalidInputError(job / "patches", "no coords files (run `medcl wsi tile`)")
        encoder = build_encoder(cfg)
        settings = feature_settings(cfg, encoder)
        out_dir = features_dir(job, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        bags = any(out_dir.glob("*.h5"))
        check_stamp(out_dir, settings, has_outputs=bags, write=False)
        barrier()  # every rank checked before rank 0 writes the stamp
        if info.is_main:
            save_config(cfg, out_dir)
            write_stamp(out_dir, settings)
        index = slide_index(job, cfg.slides)
        mine = coords_files[info.rank :: info.world_size]
        start = time.perf_counter()
        rows = []
        bar = tqdm(mine, desc=f"features rank {info.rank}", unit="slide", disable=not info.is_main)
        for coords_path in bar:
            row = _one_slide(coords_path, out_dir, encoder, cfg, index, info.device)
            rows.append(row)
            bar.set_postfix(slide=row.slide, state=row.state)
        seconds = time.perf_counter() - start
        barrier()
        gathered = all_gather_object((rows, seconds))
        all_rows = [r for rank_rows, _ in gathered for r in rank_rows]
        wall = max(s for _, s in gathered)
        if info.is_main:
            _write_status(out_dir / "status.csv", all_rows)
        tiles = sum(r.new_tiles for r in all_rows)
        summary: dict[str, Any] = {
            "out_dir": str(out_dir),
            "encoder": encoder.name,
            "world_size": info.world_size,
            "slides_per_rank": [len(rank_rows) for rank_rows, _ in gathered],
            "slides": len(all_rows),
            "ok": sum(r.state == "ok" for r in all_rows),
            "empty": sum(r.state == "empty" for r in all_rows),
            "failed": sum(r.state == "failed" for r in all_rows),
            "skipped": sum(r.message == "already complete" for r in all_rows),
            "tiles": tiles,
            "seconds": round(wall, 3),
            "tiles_per_s": round(tiles / wall, 1) if wall > 0 else 0.0,
            "failures": {r.slide: r.message for r in all_rows if r.state == "failed"},
        }
        logger.info("extract summary: %s", summary)
        return summary
    finally:
        cleanup()
