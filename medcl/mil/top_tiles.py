"""The highest- (and lowest-) scoring tiles of a slide saved as PNGs with a CSV index."""

from __future__ import annotations

import csv
import logging
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

from medcl.io.slides import Slide

logger = logging.getLogger(__name__)

TOP_TILES_CSV = "top_tiles.csv"
CSV_FIELDS = ("kind", "rank", "score", "x", "y", "file")


def rank_tiles(scores: np.ndarray, k: int, *, lowest: bool = False) -> np.ndarray:
    """Indices of the ``k`` highest (or lowest) finite scores, best first; ties by index."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = np.flatnonzero(np.isfinite(s))
    key = s[finite] if lowest else -s[finite]
    order = finite[np.argsort(key, kind="stable")]
    return order[: max(0, k)]


def tile_file_name(kind: str, rank: int, score: float, x: int, y: int) -> str:
    """``top_01_score0.9731_x1024_y512.png`` (rank from 1)."""
    return f"{kind}_{rank:02d}_score{score:.4f}_x{x}_y{y}.png"


def save_top_tiles(
    slide: Slide,
    coords: np.ndarray,
    scores: np.ndarray,
    k: int,
    read_level: int,
    read_size: int,
    out_dir: str | PathLike[str],
    *,
    bottom_k: int = 0,
) -> list[dict[str, object]]:
    """Read the top-``k`` (and bottom-``bottom_k``) tiles from the slide and save them.

    Args:
        slide: the open slide the coordinates belong to.
        coords: ``(N, 2)`` level-0 (x, y) top-left corners.
        scores: ``(N,)`` tile scores (NaN tiles are never picked).
        k: number of highest-scoring tiles.
        read_level: pyramid level to read (the tiles' ``patch_level``).
        read_size: tile side in pixels at ``read_level``.
        out_dir: folder for the PNGs and ``top_tiles.csv``.
        bottom_k: number of lowest-scoring tiles, saved as ``bottom_*``.

    Returns:
        The CSV rows: ``kind`` (top|bottom), ``rank`` (1 = most extreme), ``score``, ``x``,
        ``y``, ``file`` (PNG name inside ``out_dir``).
    """
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(xy) != len(s):
        raise ValueError(f"coords has {len(xy)} tiles but scores has {len(s)}")
    if read_size < 1:
        raise ValueError(f"read_size must be >= 1, got {read_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for kind, count, lowest in (("top", k, False), ("bottom", bottom_k, True)):
        for rank, i in enumerate(rank_tiles(s, count, lowest=lowest).tolist(), start=1):
            x, y = int(xy[i, 0]), int(xy[i, 1])
            tile = slide.read_region((x, y), read_level, (read_size, read_size))
            name = tile_file_name(kind, rank, float(s[i]), x, y)
            Image.fromarray(tile).save(out / name)
            rows.append(
                {"kind": kind, "rank": rank, "score": float(s[i]), "x": x, "y": y, "file": name}
            )
    with (out / TOP_TILES_CSV).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    logger.info("saved %d tiles to %s", len(rows), out)
    return rows
