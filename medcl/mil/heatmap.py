"""Attention / instance-score heatmaps over a slide thumbnail (pure numpy rendering + PNG writer).

Tiles are given by their level-0 top-left corners and side (``patch_size_level0``) as in the
coords HDF5 of the whole-slide pipeline. :func:`tile_score_map` paints each tile's score over
the thumbnail pixels it covers (overlapping tiles are averaged, pixels under no tile are NaN),
:func:`normalise_scores` makes scores comparable across slides (rank or min-max), and
:func:`blend_heatmap` overlays a colour map on the thumbnail only where tiles exist.

Readable by a pathologist: the default colour map is ``viridis`` (perceptually uniform: equal
steps in score look like equal steps in colour, and it stays ordered in greyscale and for
red-green colour blindness; ``jet`` invents bands), every figure carries a colour bar named by
:func:`score_label` with its range, and :func:`save_colorbar_png` writes the same bar alone, to
show beside the transparent layer a viewer blends itself.
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from medcl.viz.blend import blend_layer

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

logger = logging.getLogger(__name__)

NormaliseMode = Literal["rank", "minmax", "none"]
NORMALISE_MODES: tuple[str, ...] = ("rank", "minmax", "none")
DEFAULT_CMAP = "viridis"
PERCEPTUALLY_UNIFORM = ("viridis", "magma", "cividis", "inferno", "plasma")
SCORE_NAMES = {"instance_probability": "instance probability", "attention": "attention"}


def score_label(kind: str, normalise: str) -> str:
    """What the colours mean, for the colour bar: ``"instance probability"`` (raw, 0-1),
    ``"attention (rank-normalised)"``, ``"instance probability (min-max normalised)"``...

    Args:
        kind: ``"instance_probability"`` (INS, max, mean: the classifier's probability of the
            positive class for each tile) or ``"attention"`` (ABMIL, TransMIL: the weight of
            each tile in the bag's representation, not a probability).
        normalise: ``"rank"``, ``"minmax"`` or ``"none"``.
    """
    if kind not in SCORE_NAMES:
        raise ValueError(f"unknown score kind {kind!r}; choose one of {', '.join(SCORE_NAMES)}")
    if normalise not in NORMALISE_MODES:
        raise ValueError(f"unknown normalisation {normalise!r}")
    name = SCORE_NAMES[kind]
    if normalise == "rank":
        return f"{name} (rank-normalised)"
    if normalise == "minmax":
        return f"{name} (min-max normalised)"
    return name if kind == "instance_probability" else f"{name} (raw)"


def colorbar_ticks(normalise: str, vmin: float, vmax: float) -> tuple[list[float], list[str]]:
    """Tick positions and labels of the bar; the ends of a rank scale name the tiles they mark."""
    mid = (vmin + vmax) / 2.0
    if normalise == "rank":
        return [vmin, mid, vmax], ["0 (lowest tile)", "0.5 (median)", "1 (highest tile)"]
    return [vmin, mid, vmax], [f"{v:.3g}" for v in (vmin, mid, vmax)]


def _tile_edges(start: np.ndarray, side: float, scale: float, limit: int) -> np.ndarray:
    """Pixel spans ``(N, 2)`` [a, b) of tiles on one axis; at least one pixel each, clipped.

    Edges are rounded (not floored/ceiled) so tiles that touch in level-0 share a pixel edge
    instead of both painting the boundary pixel. The caller drops tiles lying outside the slide.
    """
    a = np.clip(np.rint(start * scale).astype(np.int64), 0, limit - 1)
    b = np.maximum(np.rint((start + side) * scale).astype(np.int64), a + 1)
    return np.stack([a, np.minimum(b, limit)], axis=1)


def tile_score_map(
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: float,
    level0_dims: tuple[int, int],
    out_shape: tuple[int, int],
) -> np.ndarray:
    """Per-pixel mean score of the tiles covering each pixel of an ``out_shape`` image.

    Args:
        coords: ``(N, 2)`` (x, y) level-0 top-left corners of the tiles.
        scores: ``(N,)`` score per tile; NaN scores are ignored.
        patch_size_level0: tile side in level-0 pixels.
        level0_dims: ``(width, height)`` of slide level 0.
        out_shape: ``(height, width)`` of the map (the thumbnail's shape).

    Returns:
        ``(height, width)`` float64 map, NaN where no tile lies. Accumulated with 2-D
        difference arrays (four corner updates per tile and two cumulative sums), so the cost
        is ``O(N + height * width)`` whatever the tile size.
    """
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(xy) != len(s):
        raise ValueError(f"coords has {len(xy)} tiles but scores has {len(s)}")
    if patch_size_level0 <= 0:
        raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0}")
    height, width = int(out_shape[0]), int(out_shape[1])
    w0, h0 = level0_dims
    if height < 1 or width < 1 or w0 < 1 or h0 < 1:
        raise ValueError(f"empty shapes: out_shape {out_shape}, level0_dims {level0_dims}")
    # finite scores of tiles that overlap the slide
    keep = np.isfinite(s) & (xy[:, 0] < w0) & (xy[:, 1] < h0)
    keep &= (xy[:, 0] + patch_size_level0 > 0) & (xy[:, 1] + patch_size_level0 > 0)
    xy, s = xy[keep], s[keep]
    xs = _tile_edges(xy[:, 0], patch_size_level0, width / w0, width)
    ys = _tile_edges(xy[:, 1], patch_size_level0, height / h0, height)

    total = np.zeros((height + 1, width + 1))
    count = np.zeros((height + 1, width + 1), dtype=np.int64)
    for (yi, xi), sign in (((0, 0), 1), ((0, 1), -1), ((1, 0), -1), ((1, 1), 1)):
        np.add.at(total, (ys[:, yi], xs[:, xi]), sign * s)
        np.add.at(count, (ys[:, yi], xs[:, xi]), sign)
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = count.cumsum(0).cumsum(1)[:height, :width]
    out = np.full((height, width), np.nan)
    covered = count > 0
    out[covered] = total[covered] / count[covered]
    return out


def normalise_scores(scores: np.ndarray, mode: str = "rank") -> np.ndarray:
    """Scores mapped to ``[0, 1]`` for display; NaN stays NaN.

    Args:
        scores: ``(N,)`` raw tile scores (probabilities, attention weights...).
        mode: ``"rank"`` -- percentile rank, ``(rank - 1) / (n - 1)`` with ties sharing their
            average rank (robust to attention's long tail, comparable across slides);
            ``"minmax"`` -- ``(s - min) / (max - min)``; ``"none"`` -- unchanged (float64).
            With a single finite score, or all equal, rank and minmax give 0.5.

    Returns:
        ``(N,)`` float64.
    """
    if mode not in NORMALISE_MODES:
        choices = ", ".join(NORMALISE_MODES)
        raise ValueError(f"unknown normalisation {mode!r}; choose one of {choices}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if mode == "none":
        return s.copy()
    out = np.full(s.shape, np.nan)
    ok = np.isfinite(s)
    vals = s[ok]
    if vals.size == 0:
        return out
    if mode == "rank":
        _, inverse, counts = np.unique(vals, return_inverse=True, return_counts=True)
        first = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first copy
        rank = (first + (counts - 1) / 2.0)[inverse]  # ties share their average rank
        out[ok] = rank / (vals.size - 1) if vals.size > 1 else 0.5
    else:
        span = float(vals.max() - vals.min())
        out[ok] = (vals - vals.min()) / span if span > 0 else 0.5
    return out


def _colormap(cmap: str) -> Colormap:
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {cmap!r} (any matplotlib name, e.g. viridis, magma)")
    return matplotlib.colormaps[cmap]


def blend_heatmap(
    thumbnail: np.ndarray,
    score_map: np.ndarray,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> np.ndarray:
    """Colour-mapped scores over the thumbnail where tiles exist.

    Args:
        thumbnail: ``(h, w, 3)`` uint8 RGB.
        score_map: ``(h, w)`` scores from :func:`tile_score_map`; NaN pixels keep the
            thumbnail unchanged.
        alpha: weight of the colour (0 = thumbnail only, 1 = colour only).
        cmap: matplotlib colour map name.
        vmin, vmax: scores mapped to the ends of the colour map (clipped outside).

    Returns:
        ``(h, w, 3)`` uint8 RGB: ``round((1 - alpha) * thumbnail + alpha * colour)`` on tiles.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3:
        raise ValueError(f"thumbnail must be (h, w, 3), got {thumbnail.shape}")
    if score_map.shape != thumbnail.shape[:2]:
        raise ValueError(f"score map {score_map.shape} does not match thumbnail {thumbnail.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
    where = np.isfinite(score_map)
    if not where.any():
        return thumbnail.astype(np.uint8, copy=True)
    values = np.clip((score_map[where] - vmin) / (vmax - vmin), 0.0, 1.0)
    colour = np.zeros(thumbnail.shape, dtype=np.float64)
    colour[where] = np.asarray(_colormap(cmap)(values))[:, :3] * 255.0
    return blend_layer(thumbnail, colour, np.where(where, alpha, 0.0))


def heatmap_rgba(
    score_map: np.ndarray, cmap: str = DEFAULT_CMAP, *, vmin: float = 0.0, vmax: float = 1.0
) -> np.ndarray:
    """The heatmap as a layer: colour-mapped scores, opaque on tiles, transparent elsewhere.

    Viewers (the review app, QuPath, any image editor) blend it over the thumbnail with their
    own opacity.

    Args:
        score_map: ``(h, w)`` scores from :func:`tile_score_map` (NaN: no tile).
        cmap, vmin, vmax: as in :func:`blend_heatmap`.

    Returns:
        ``(h, w, 4)`` uint8 RGBA; alpha 255 where the score is finite, 0 elsewhere.
    """
    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
    out = np.zeros((*score_map.shape, 4), dtype=np.uint8)
    where = np.isfinite(score_map)
    values = np.clip((score_map[where] - vmin) / (vmax - vmin), 0.0, 1.0)
    out[where, :3] = np.rint(np.asarray(_colormap(cmap)(values))[:, :3] * 255.0).astype(np.uint8)
    out[where, 3] = 255
    return out


def save_heatmap_png(
    path: str | PathLike[str],
    image: np.ndarray,
    *,
    title: str | None = None,
    colorbar: bool = False,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    colorbar_label: str = "score",
    colorbar_ticks: tuple[list[float], list[str]] | None = None,
) -> Path:
    """Write a blended heatmap as PNG, optionally with a title and a colour bar.

    Without title and colour bar the pixels are written exactly (PIL); with either, a
    matplotlib figure keeps the image at one figure pixel per image pixel and adds a bar of
    ``cmap`` from ``vmin`` to ``vmax`` on the right and/or the title (lines kept, font shrunk
    to fit the width) above.

    Returns:
        The PNG path (parent folders created).
    """
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if title is None and not colorbar:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(out)
        return out
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dpi = 100
    h, w = image.shape[:2]
    bar_px = 150 if colorbar else 0
    fig_w = w + bar_px
    lines = title.splitlines() if title else []
    # shrink the title font (5-11 pt) so its longest line fits the figure width
    longest = max((len(line) for line in lines), default=1)
    fontsize = float(np.clip(fig_w / (0.62 * longest * dpi / 72), 5.0, 11.0))
    title_px = round(len(lines) * 1.4 * fontsize * dpi / 72 + 8) if lines else 0
    fig_h = h + title_px
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, w / fig_w, h / fig_h))
    ax.imshow(image, interpolation="none")
    ax.set_axis_off()
    if colorbar:
        cax = fig.add_axes(((w + 15) / fig_w, 0.1 * h / fig_h, 18 / fig_w, 0.8 * h / fig_h))
        mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=_colormap(cmap))
        bar = fig.colorbar(mappable, cax=cax, label=colorbar_label)
        if colorbar_ticks is not None:
            bar.set_ticks(colorbar_ticks[0], labels=colorbar_ticks[1], fontsize=7)
    if title:
        y = 1.0 - 0.5 * title_px / fig_h
        fig.text(0.5, y, title, ha="center", va="center", fontsize=fontsize, linespacing=1.2)
    fig.savefig(out, dpi=dpi)
    logger.info("wrote heatmap %s", out)
    return out


def save_colorbar_png(
    path: str | PathLike[str],
    *,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "score",
    ticks: tuple[list[float], list[str]] | None = None,
    height: int = 320,
) -> Path:
    """A vertical colour bar alone (``cmap`` from ``vmin`` at the bottom to ``vmax`` at the top,
    named ``label``), to show beside a heatmap layer; ``height`` pixels tall, 170 wide.

    Returns:
        The PNG path (parent folders created).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not vmax > vmin:
        raise ValueError(f"need vmax > vmin, got vmin={vmin}, vmax={vmax}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dpi, width = 100, 170
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    cax = fig.add_axes((12 / width, 0.06, 22 / width, 0.88))
    mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=_colormap(cmap))
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=8)
    if ticks is not None:
        bar.set_ticks(ticks[0], labels=ticks[1], fontsize=7)
    fig.savefig(out, dpi=dpi)
    return out
