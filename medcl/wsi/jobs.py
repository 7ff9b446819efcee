"""The resumable tiling job: slides -> tissue masks, outlines and tile coordinates.

Output folder (TRIDENT-style) ``<workspace>/wsi/<job-name>/<settings>/`` with ``settings`` like
``0.50mpp_256px_0px_overlap`` (or ``20x_256px_0px_overlap``), holding ``config.yaml``,
``tiling.json`` (:data:`TILING_VERSION`, checked with the settings on a re-run),
``status.csv`` (slide, state ok|failed|empty, n_tiles, seconds, message),
``thumbnails/<stem>.png``, ``masks/<stem>.png``, ``contours/<stem>.geojson`` (level-0 px,
QuPath-importable) and ``patches/<stem>.h5`` (:mod:`medcl.wsi.coords_io`). A slide whose coords
file exists is skipped on re-run; one that cannot be read is recorded as failed and the others
go on; one without tissue gets an empty coords file and state ``empty``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import Field, model_validator
from tqdm import tqdm

from medcl.config import StrictModel, save_config
from medcl.errors import InvalidInputError, MedclError
from medcl.io.geojson import write_geojson
from medcl.workspace import slug, workspace_root
from medcl.wsi.coords_io import CoordsAttrs, read_coords, write_coords
from medcl.wsi.tiling import magnification_to_mpp, plan_tiling, tile_tissue
from medcl.wsi.tissue import contours_to_geojson, detect_tissue

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS = [".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif"]
STATUS_COLUMNS = ["slide", "state", "n_tiles", "seconds", "message"]
DEFAULT_TARGET_MPP = 0.5
PenColor = Literal["blue", "green", "black", "red"]
ALL_PENS: tuple[PenColor, ...] = ("blue", "green", "black", "red")


class TissueDetectorConfig(StrictModel):
    """Options of :func:`medcl.wsi.tissue.detect_tissue`; areas in square microns."""

    saturation_threshold: float | None = Field(default=None, ge=0, le=1)
    min_saturation: float = Field(default=0.05, ge=0, le=1)
    white_value: float = Field(default=0.85, ge=0, le=1)
    white_saturation: float = Field(default=0.10, ge=0, le=1)
    black_value: float = Field(default=0.12, ge=0, le=1)
    pen_colors: list[PenColor] = Field(default_factory=lambda: list(ALL_PENS))
    pen_dilation: int = Field(default=2, ge=0)
    open_radius: int = Field(default=1, ge=0)
    close_radius: int = Field(default=2, ge=0)
    min_tissue_area_um2: float = Field(default=20000.0, ge=0)
    min_hole_area_um2: float = Field(default=10000.0, ge=0)
    min_pen_area_um2: float = Field(default=20000.0, ge=0)
    contour_tolerance: float = Field(default=0.5, ge=0)


class TileJobConfig(StrictModel):
    """``medcl wsi tile``: give ``target_mpp`` or ``magnification`` (default 0.5 um/px)."""

    slides: Path | None = None
    job_name: str | None = None
    out_dir: Path | None = None
    mpp: float | None = Field(default=None, gt=0)
    target_mpp: float | None = Field(default=None, gt=0)
    magnification: float | None = Field(default=None, gt=0)
    patch_size: int = Field(default=256, ge=16)
    overlap: int = Field(default=0, ge=0)
    min_tissue: float = Field(default=0.25, ge=0, le=1)
    thumbnail_size: int = Field(default=2048, ge=64)
    backend: Literal["auto", "openslide", "tiffslide"] = "auto"
    extensions: list[str] = Field(default_factory=lambda: list(SLIDE_EXTENSIONS))
    recursive: bool = True
    tissue: TissueDetectorConfig = Field(default_factory=TissueDetectorConfig)

    @model_validator(mode="after")
    def _check(self) -> TileJobConfig:
        if self.target_mpp is not None and self.magnification is not None:
            raise ValueError("give target_mpp or magnification, not both")
        if self.overlap >= self.patch_size:
            raise ValueError(f"overlap {self.overlap} must be smaller than patch_size")
        return self

    @property
    def resolved_target_mpp(self) -> float:
        if self.magnification is not None:
            return magnification_to_mpp(self.magnification)
        return self.target_mpp if self.target_mpp is not None else DEFAULT_TARGET_MPP

    def settings_name(self) -> str:
        """``0.50mpp_256px_0px_overlap`` or ``20x_256px_0px_overlap``."""
        res = (
            f"{self.magnification:g}x"
            if self.magnification
            else f"{self.resolved_target_mpp:.2f}mpp"
        )
        return f"{res}_{self.patch_size}px_{self.overlap}px_overlap"


# Settings that change the outputs without changing the folder name: a re-run must match them.
_FINGERPRINT = ("min_tissue", "thumbnail_size", "tissue")

# Raised when a medcl change alters the tiles of unchanged settings; kept in the job folder's
# ``tiling.json`` (a folder without one was tiled at version 1).
#   1: block-read thumbnails read each stripe at the level-0 location rounded from its level
#      position, which the backend resamples where the downsample is not whole (2.0005 on SVS)
#   2: they read the exact level pixels, so tissue masks (and the tiles kept) may differ
TILING_VERSION = 2
_VERSION_FILE = "tiling.json"


@dataclass(frozen=True)
class SlideEntry:
    """A slide to tile and its mpp override (None: from the metadata or the job's ``mpp``)."""

    path: Path
    mpp: float | None = None


def list_slides(source: Path, extensions: list[str], *, recursive: bool = True) -> list[SlideEntry]:
    """Slides of a folder (by extension, sorted) or of a CSV with ``slide`` [+ ``mpp``] columns
    (relative paths are relative to the CSV's folder)."""
    if not source.exists():
        raise InvalidInputError(source, "slide folder or CSV not found")
    if source.is_dir():
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        files = source.rglob("*") if recursive else source.iterdir()
        found = sorted(p for p in files if p.is_file() and p.name.lower().endswith(exts))
        if not found:
            raise InvalidInputError(source, f"no slide files ({', '.join(exts)}) in this folder")
        return [SlideEntry(p) for p in found]
    with source.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "slide" not in rows[0]:
        raise InvalidInputError(source, "slide CSV needs a 'slide' column and at least one row")
    out = []
    for number, row in enumerate(rows, start=2):
        path = Path((row.get("slide") or "").strip())
        if not str(path) or str(path) == ".":
            raise InvalidInputError(source, f"line {number}: empty 'slide' value")
        mpp_text = (row.get("mpp") or "").strip()
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            problem = f"line {number}: mpp {mpp_text!r} is not a number"
            raise InvalidInputError(source, problem) from None
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise InvalidInputError(source, f"line {number}: mpp must be positive, got {mpp}")
        out.append(SlideEntry(path if path.is_absolute() else source.parent / path, mpp))
    return out


def job_folder(cfg: TileJobConfig, workspace: str | Path | None) -> Path:
    """``out_dir``, else ``<workspace>/wsi/<job_name or slides name>/<settings>``."""
    if cfg.out_dir is not None:
        return cfg.out_dir
    name = cfg.job_name or (cfg.slides.stem if cfg.slides is not None else "slides")
    return workspace_root(workspace) / "wsi" / slug(name) / cfg.settings_name()


def _check_fingerprint(cfg: TileJobConfig, out: Path) -> None:
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    new = cfg.model_dump(mode="json")
    changed = [k for k in _FINGERPRINT if k in old and old[k] != new[k]]
    if changed:
        raise InvalidInputError(
            saved,
            f"this folder was tiled with other {', '.join(changed)}; "
            "use another --out (or job name) or delete the folder",
        )
    version = tiling_version(out)
    if version != TILING_VERSION and any((out / "patches").glob("*.h5")):
        which = "an older" if version < TILING_VERSION else "a newer"
        raise InvalidInputError(
            out,
            f"this folder was tiled by {which} medcl (tiling version {version}, now "
            f"{TILING_VERSION}; version 2 reads thumbnails at exact level pixels), so its tissue "
            "masks may differ; use another --out (or job name) or delete the folder",
        )


def tiling_version(out: Path) -> int:
    """The :data:`TILING_VERSION` a job folder was tiled at (1 when it does not say)."""
    path = out / _VERSION_FILE
    if not path.is_file():
        return 1
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["tiling_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(path, f"unreadable tiling version ({exc})") from None


def _read_status(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


def _write_status(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=STATUS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow(rows[name])
    tmp.replace(path)


def thumbnail_level(level_dimensions: list[tuple[int, int]], requested: int) -> int | None:
    """A pyramid level to detect tissue on as it is, instead of a ``requested`` px thumbnail:
    the largest level whose longer side is below ``requested`` but at least half of it (None
    when there is none, or level 0 is no larger than ``requested``). Decoding a level 2-4x that
    size only to shrink it costs most of a small slide's time; the mask stays finer than
    ``requested / 2`` px, ample for tiles that each cover several mask pixels."""
    sides = [max(w, h) for w, h in level_dimensions]
    if sides[0] <= requested:
        return None
    close = [lvl for lvl, side in enumerate(sides) if requested / 2 <= side < requested]
    return close[0] if close else None


def tile_slide(entry: SlideEntry, cfg: TileJobConfig, out: Path) -> tuple[str, int, str]:
    """Tile one slide into ``out``; returns ``(state, n_tiles, message)``, state ok or empty.

    Raises:
        MedclError: the slide cannot be opened or read, or has no mpp.
    """
    from medcl.io.slides import open_slide

    stem = entry.path.stem
    with open_slide(entry.path, backend=cfg.backend, mpp=entry.mpp or cfg.mpp) as slide:
        mpp = slide.require_mpp()
        level = thumbnail_level(slide.level_dimensions, cfg.thumbnail_size)
        if level is None:
            thumb = slide.thumbnail(cfg.thumbnail_size)
        else:
            thumb = slide.read_region((0, 0), level, slide.level_dimensions[level])
        dims, downsamples = slide.dimensions, slide.level_downsamples
    sx, sy = dims[0] / thumb.shape[1], dims[1] / thumb.shape[0]
    opts = cfg.tissue.model_dump()
    found = detect_tissue(
        thumb,
        mpp=mpp * sx,
        min_tissue_area=opts.pop("min_tissue_area_um2"),
        min_hole_area=opts.pop("min_hole_area_um2"),
        min_pen_area=opts.pop("min_pen_area_um2"),
        area_unit="um2",
        **opts,
    )
    plan = plan_tiling(
        dims,
        downsamples,
        mpp,
        target_mpp=cfg.resolved_target_mpp,
        patch_size=cfg.patch_size,
        overlap=cfg.overlap,
    )
    coords, fraction = tile_tissue(plan, found.mask, min_tissue=cfg.min_tissue)
    for sub, image in (("thumbnails", thumb), ("masks", found.mask.astype(np.uint8) * 255)):
        (out / sub).mkdir(parents=True, exist_ok=True)
        # fast zlib (level 1, run-length strategy): the default costs ~4x the CPU for ~10%
        # smaller previews
        Image.fromarray(image).save(out / sub / f"{stem}.png", compress_level=1, compress_type=3)
    write_geojson(
        out / "contours" / f"{stem}.geojson", contours_to_geojson(found.contours, (sx, sy))
    )
    attrs = CoordsAttrs(**plan.as_attrs(), slide=entry.path.name)
    write_coords(out / "patches" / f"{stem}.h5", coords, attrs, fraction)
    if len(coords):
        return "ok", len(coords), ""
    if not found.mask.any():
        return "empty", 0, "no tissue found"
    return "empty", 0, f"no tile has tissue fraction >= {cfg.min_tissue}"


def run_tile_job(
    cfg: TileJobConfig, *, workspace: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Tile every slide of ``cfg.slides``; returns a summary dict (counts, tiles, failures).

    ``failures`` maps every failed slide to its message; ``refused`` lists those of them that
    failed because of the input (a :class:`~medcl.errors.MedclError`: unreadable, larger than the
    size limits, no mpp, a duplicate name), as opposed to an unexpected error.
    """
    if cfg.slides is None:
        raise InvalidInputError("--slides", "no slide folder or CSV given")
    source = cfg.slides.resolve()
    cfg = cfg.model_copy(update={"slides": source})  # absolute, so config.yaml finds it later
    entries = list_slides(source, cfg.extensions, recursive=cfg.recursive)
    out = job_folder(cfg, workspace)
    out.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(cfg, out)
    save_config(cfg, out)
    (out / _VERSION_FILE).write_text(json.dumps({"tiling_version": TILING_VERSION}) + "\n")
    status_path = out / "status.csv"
    rows = _read_status(status_path)
    counts = {"ok": 0, "empty": 0, "failed": 0, "skipped": 0}
    failures: dict[str, str] = {}
    refused: list[str] = []  # failures caused by the input (unreadable, too large, no mpp...)
    empty: list[str] = []
    seen: dict[str, Path] = {}
    n_tiles = 0
    start = time.perf_counter()
    for entry in tqdm(entries, desc="tiling", unit="slide", disable=None if progress else True):
        name, stem = entry.path.name, entry.path.stem
        coords_file = out / "patches" / f"{stem}.h5"
        if stem in seen:
            message = f"{entry.path}: same name as {seen[stem]}; rename one of them"
            rows[f"{name} ({entry.path.parent})"] = _row(name, "failed", 0, 0.0, message)
            counts["failed"] += 1
            failures[str(entry.path)] = message
            refused.append(str(entry.path))
            continue
        seen[stem] = entry.path
        if coords_file.is_file():
            counts["skipped"] += 1
            n = len(read_coords(coords_file))
            n_tiles += n
            if name not in rows:
                rows[name] = _row(name, "ok" if n else "empty", n, 0.0, "")
            continue
        t0 = time.perf_counter()
        bad_input = False
        try:
            state, n, message = tile_slide(entry, cfg, out)
        except MedclError as exc:  # the slide itself is refused: a one-line reason
            state, n, message, bad_input = "failed", 0, str(exc), True
        except Exception as exc:  # one bad slide must not stop the others
            log.exception("%s: unexpected error while tiling", entry.path)
            state, n, message = "failed", 0, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        if state == "failed":
            if bad_input:  # the caller reports these, one line each
                refused.append(str(entry.path))
                log.info("tiling refused: %s", message)
            else:
                log.error("%s: tiling failed: %s", entry.path, message)
            failures[str(entry.path)] = message
        elif state == "empty":
            log.warning("%s: %s", entry.path, message)
            empty.append(name)
        else:
            log.info("%s: %d tiles in %.1f s", name, n, seconds)
        counts[state] += 1
        n_tiles += n
        rows[name] = _row(name, state, n, seconds, message)
        _write_status(status_path, rows)
    _write_status(status_path, rows)
    return {
        "out_dir": str(out),
        "slides": len(entries),
        **counts,
        "tiles": n_tiles,
        "seconds": round(time.perf_counter() - start, 2),
        "empty_slides": empty,
        "failures": failures,
        "refused": refused,
    }


def _row(name: str, state: str, n: int, seconds: float, message: str) -> dict[str, Any]:
    return {
        "slide": name,
        "state": state,
        "n_tiles": n,
        "seconds": round(seconds, 3),
        "message": message,
    }
