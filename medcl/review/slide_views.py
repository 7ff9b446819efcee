"""Rendering logic of the slide viewer: heatmap blending, colour bar, zoom regions, top tiles.

Pure functions on arrays (:func:`blend_heatmap`, :func:`clamp_region`, :func:`draw_box`,
:func:`colorbar_image`, :func:`zoom_at`, :func:`parse_tile_name`) and thin readers at the edge
(:func:`load_heatmap`, :func:`read_zoom`, :func:`slide_thumbnail`, :func:`tile_side`).

Heatmaps the app colours itself use :data:`HEATMAP_CMAP` (viridis: perceptually uniform, ordered
in greyscale and for red-green colour blindness), the map the MIL heatmap pipeline uses too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.viz.blend import blend_layer

MAX_ZOOM = 2048  # largest zoom edge read at full resolution, in level-0 pixels
HEATMAP_CMAP = "viridis"  # = medcl.mil.heatmap.DEFAULT_CMAP
OUTLINE_OUTER = (0, 0, 0)  # the zoom outline: a black band outside a white one, visible on any
OUTLINE_INNER = (255, 255, 255)  # tissue or heatmap colour
MIN_BOX = 12  # smallest zoom outline drawn on the thumbnail, in thumbnail pixels


def load_heatmap(path: Path) -> np.ndarray:
    """Read a heatmap image keeping what :func:`heatmap_layer` needs.

    Returns:
        ``(h, w, 4)`` uint8 for images with transparency, ``(h, w)`` scores for greyscale
        (uint8 0..255, or float for 32-bit float images), else ``(h, w, 3)`` uint8 RGB.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                return np.asarray(img.convert("RGBA"))
            if img.mode == "F":
                return np.asarray(img, dtype=np.float64)
            if img.mode in ("L", "I", "I;16", "1"):
                return np.asarray(img.convert("L"))
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(path, f"cannot read heatmap image ({exc})") from exc


def heatmap_layer(heatmap: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Colour and per-pixel weight of a heatmap image resized to ``size = (width, height)``.

    ``heatmap`` is ``(h, w)`` scores (0..255 or 0..1, coloured with :data:`HEATMAP_CMAP`,
    weight = score), ``(h, w, 3)`` RGB (weight 1) or ``(h, w, 4)`` RGBA (weight = alpha).

    Returns:
        ``(height, width, 3)`` float colour and ``(height, width)`` weight in [0, 1].
    """
    hm = np.asarray(heatmap)
    if hm.ndim == 2:
        scores = hm.astype(np.float64)
        scores = scores / 255.0 if scores.max(initial=0) > 1.0 else scores
        from matplotlib import colormaps

        rgba = (colormaps[HEATMAP_CMAP](np.clip(scores, 0, 1)) * 255).astype(np.uint8)
        rgba[..., 3] = np.rint(np.clip(scores, 0, 1) * 255).astype(np.uint8)
    elif hm.ndim == 3 and hm.shape[2] == 3:
        rgba = np.concatenate([hm.astype(np.uint8), np.full((*hm.shape[:2], 1), 255, np.uint8)], 2)
    elif hm.ndim == 3 and hm.shape[2] == 4:
        rgba = hm.astype(np.uint8)
    else:
        raise ValueError(f"heatmap must be (h, w), (h, w, 3) or (h, w, 4), got {hm.shape}")
    if (rgba.shape[1], rgba.shape[0]) != size:
        rgba = np.asarray(Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.BILINEAR))
    return rgba[..., :3].astype(np.float64), rgba[..., 3].astype(np.float64) / 255.0


def blend_heatmap(thumbnail: np.ndarray, heatmap: np.ndarray, opacity: float) -> np.ndarray:
    """Thumbnail with the heatmap blended in: ``(1 - a) * thumb + a * colour``,
    ``a = opacity * weight`` (see :func:`heatmap_layer`). Returns ``(H, W, 3)`` uint8."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    thumb = np.asarray(thumbnail, dtype=np.uint8)
    colour, weight = heatmap_layer(heatmap, (thumb.shape[1], thumb.shape[0]))
    return blend_layer(thumb, colour, opacity * weight)


@dataclass(frozen=True)
class Region:
    """A level-0 rectangle: top-left ``(x, y)`` and ``width x height``."""

    x: int
    y: int
    width: int
    height: int


def clamp_region(x: int, y: int, size: int, dimensions: tuple[int, int]) -> Region:
    """A ``size`` square at ``(x, y)`` moved and shrunk to lie inside a slide.

    The edge is capped at :data:`MAX_ZOOM` and at the slide's width / height; the corner is
    then moved so the region stays inside ``dimensions = (width, height)``.
    """
    width, height = dimensions
    if size <= 0:
        raise ValueError(f"zoom size must be positive, got {size}")
    w, h = min(size, MAX_ZOOM, width), min(size, MAX_ZOOM, height)
    return Region(min(max(0, int(x)), width - w), min(max(0, int(y)), height - h), w, h)


def thumbnail_to_level0(
    point: tuple[float, float], thumb_size: tuple[float, float], dimensions: tuple[int, int]
) -> tuple[int, int]:
    """Level-0 ``(x, y)`` of a thumbnail pixel ``point``; sizes are ``(width, height)``."""
    return (
        int(point[0] * dimensions[0] / thumb_size[0]),
        int(point[1] * dimensions[1] / thumb_size[1]),
    )


def box_on_thumbnail(
    region: Region, thumb_size: tuple[int, int], dimensions: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Thumbnail pixel box ``(x0, y0, x1, y1)`` (inclusive) of a level-0 ``region``.

    Sizes are ``(width, height)``. A box narrower than :data:`MIN_BOX` pixels is widened around
    its centre (kept inside the thumbnail) so a small zoom is still seen on a large slide.
    """
    w, h = thumb_size
    sx, sy = w / dimensions[0], h / dimensions[1]
    spans = []
    for start, length, scale, limit in (
        (region.x, region.width, sx, w),
        (region.y, region.height, sy, h),
    ):
        a = min(limit - 1, int(start * scale))
        b = min(limit - 1, max(a, math.ceil((start + length) * scale) - 1))
        need = min(MIN_BOX, limit)
        if b - a + 1 < need:
            centre = (a + b) // 2
            a = min(max(0, centre - need // 2), limit - need)
            b = a + need - 1
        spans.append((a, b))
    return spans[0][0], spans[1][0], spans[0][1], spans[1][1]


def _frame(out: np.ndarray, box: tuple[int, int, int, int], colour: Sequence[int], t: int) -> None:
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return
    out[y0 : min(y0 + t, y1 + 1), x0 : x1 + 1] = colour
    out[max(y1 - t + 1, y0) : y1 + 1, x0 : x1 + 1] = colour
    out[y0 : y1 + 1, x0 : min(x0 + t, x1 + 1)] = colour
    out[y0 : y1 + 1, max(x1 - t + 1, x0) : x1 + 1] = colour


def draw_box(
    image: np.ndarray,
    region: Region,
    dimensions: tuple[int, int],
    *,
    width: int = 3,
) -> np.ndarray:
    """Copy of a thumbnail ``(H, W, 3)`` with a level-0 ``region`` outlined in two bands.

    The outline is ``width`` pixels of :data:`OUTLINE_OUTER` (black) just outside the box of
    :func:`box_on_thumbnail` and ``width`` pixels of :data:`OUTLINE_INNER` (white) on its edge, so
    it shows on pale tissue, dark stain and every heatmap colour. ``dimensions`` is the slide's
    level-0 ``(width, height)``.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    x0, y0, x1, y1 = box_on_thumbnail(region, (w, h), dimensions)
    t = max(1, width)
    outer = (max(0, x0 - t), max(0, y0 - t), min(w - 1, x1 + t), min(h - 1, y1 + t))
    _frame(out, outer, OUTLINE_OUTER, t)
    _frame(out, (x0, y0, x1, y1), OUTLINE_INNER, t)
    return out


def zoom_at(
    point: tuple[float, float],
    shown_size: tuple[float, float],
    dimensions: tuple[int, int],
    size: int,
) -> Region:
    """The zoom region of edge ``size`` centred where a thumbnail shown at ``shown_size`` was
    clicked (``point`` in displayed pixels; sizes ``(width, height)``), clamped to the slide."""
    if shown_size[0] <= 0 or shown_size[1] <= 0:
        raise ValueError(f"shown size must be positive, got {shown_size}")
    cx, cy = thumbnail_to_level0(point, (shown_size[0], shown_size[1]), dimensions)
    return clamp_region(cx - size // 2, cy - size // 2, size, dimensions)


def colorbar_image(cmap: str = HEATMAP_CMAP, width: int = 256, height: int = 18) -> np.ndarray:
    """A horizontal colour bar ``(height, width, 3)`` uint8: ``cmap`` from 0 (left) to 1 (right)."""
    from matplotlib import colormaps

    if width < 2 or height < 1:
        raise ValueError(f"colour bar needs width >= 2 and height >= 1, got {width} x {height}")
    row = (colormaps[cmap](np.linspace(0.0, 1.0, width))[:, :3] * 255.0).round().astype(np.uint8)
    return np.repeat(row[None], height, axis=0)


@dataclass(frozen=True)
class TopTile:
    """A saved top tile: its rank (1 = highest score), score and level-0 top-left corner."""

    rank: int
    score: float
    x: int
    y: int


# the name medcl.mil.top_tiles.tile_file_name gives a tile: top_01_score0.9731_x1024_y512.png
_TILE_NAME = re.compile(
    r"^top_(?P<rank>\d+)_score(?P<score>[-+0-9.eE]+|nan|inf)_x(?P<x>\d+)_y(?P<y>\d+)\.png$"
)


def parse_tile_name(name: str) -> TopTile | None:
    """The :class:`TopTile` a pipeline tile file name encodes, None for any other name."""
    m = _TILE_NAME.match(name)
    if m is None:
        return None
    try:
        score = float(m["score"])
    except ValueError:
        return None
    return TopTile(int(m["rank"]), score, int(m["x"]), int(m["y"]))


def tile_region(tile: TopTile, side: int | None, fallback: int, dims: tuple[int, int]) -> Region:
    """The zoom region showing ``tile``: the tile itself when its ``side`` is known (level-0
    pixels), else a ``fallback`` square from its corner; clamped to the slide."""
    return clamp_region(tile.x, tile.y, side if side else fallback, dims)


def tile_side(scores_h5: Path) -> int | None:
    """Level-0 tile side stored in a heatmap's ``scores.h5`` (``coords`` attribute
    ``patch_size_level0``), None when the file does not say."""
    import h5py

    try:
        with h5py.File(scores_h5, "r") as f:
            value = f["coords"].attrs.get("patch_size_level0") if "coords" in f else None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(scores_h5, f"cannot read tile scores ({exc})") from exc
    return None if value is None else max(1, round(float(value)))


def read_zoom(
    slide_path: Path, x: int, y: int, size: int, *, mpp: float | None = None
) -> tuple[np.ndarray, Region]:
    """Read a zoom region at full resolution (level 0), clamped to the slide.

    Returns:
        ``(height, width, 3)`` uint8 RGB and the :class:`Region` actually read.
    """
    from medcl.io.slides import open_slide

    with open_slide(slide_path, mpp=mpp) as slide:
        region = clamp_region(x, y, size, slide.dimensions)
        pixels = slide.read_region((region.x, region.y), 0, (region.width, region.height))
    return pixels, region


def slide_thumbnail(
    slide_path: Path, max_size: int = 1024, *, mpp: float | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Thumbnail of a slide and the slide's level-0 ``(width, height)``."""
    from medcl.io.slides import open_slide

    with open_slide(slide_path, mpp=mpp) as slide:
        return slide.thumbnail(max_size), slide.dimensions


def slide_dimensions(slide_path: Path, *, mpp: float | None = None) -> tuple[int, int]:
    """Level-0 ``(width, height)`` of a slide."""
    from medcl.io.slides import open_slide

    with open_slide(slide_path, mpp=mpp) as slide:
        return slide.dimensions
