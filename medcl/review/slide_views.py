"""Rendering logic of the slide viewer: heatmap blending and full-resolution zoom regions.

Pure functions on arrays (:func:`blend_heatmap`, :func:`clamp_region`, :func:`draw_box`) and thin
readers at the edge (:func:`load_heatmap`, :func:`read_zoom`, :func:`slide_thumbnail`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medcl.errors import InvalidInputError

MAX_ZOOM = 2048  # largest zoom edge read at full resolution, in level-0 pixels


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

    ``heatmap`` is ``(h, w)`` scores (0..255 or 0..1, coloured with matplotlib's ``inferno``,
    weight = score), ``(h, w, 3)`` RGB (weight 1) or ``(h, w, 4)`` RGBA (weight = alpha).

    Returns:
        ``(height, width, 3)`` float colour and ``(height, width)`` weight in [0, 1].
    """
    hm = np.asarray(heatmap)
    if hm.ndim == 2:
        scores = hm.astype(np.float64)
        scores = scores / 255.0 if scores.max(initial=0) > 1.0 else scores
        from matplotlib import colormaps

        rgba = (colormaps["inferno"](np.clip(scores, 0, 1)) * 255).astype(np.uint8)
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
    a = (opacity * weight)[..., None]
    out = (1.0 - a) * thumb.astype(np.float64) + a * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
    point: tuple[float, float], thumb_size: tuple[int, int], dimensions: tuple[int, int]
) -> tuple[int, int]:
    """Level-0 ``(x, y)`` of a thumbnail pixel ``point``; sizes are ``(width, height)``."""
    return (
        int(point[0] * dimensions[0] / thumb_size[0]),
        int(point[1] * dimensions[1] / thumb_size[1]),
    )


def draw_box(
    image: np.ndarray,
    region: Region,
    dimensions: tuple[int, int],
    colour: tuple[int, int, int] = (0, 200, 255),
    width: int = 2,
) -> np.ndarray:
    """Copy of a thumbnail ``(H, W, 3)`` with the outline of a level-0 ``region`` drawn on it.

    ``dimensions`` is the slide's level-0 ``(width, height)``; the box is at least one pixel.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    sx, sy = w / dimensions[0], h / dimensions[1]
    x0, y0 = min(w - 1, int(region.x * sx)), min(h - 1, int(region.y * sy))
    x1 = min(w - 1, max(x0, math.ceil((region.x + region.width) * sx) - 1))
    y1 = min(h - 1, max(y0, math.ceil((region.y + region.height) * sy) - 1))
    t = max(1, width)
    out[y0 : min(y0 + t, y1 + 1), x0 : x1 + 1] = colour
    out[max(y1 - t + 1, y0) : y1 + 1, x0 : x1 + 1] = colour
    out[y0 : y1 + 1, x0 : min(x0 + t, x1 + 1)] = colour
    out[y0 : y1 + 1, max(x1 - t + 1, x0) : x1 + 1] = colour
    return out


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
