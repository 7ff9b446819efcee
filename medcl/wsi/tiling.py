"""Tile grids over a slide, kept where a thumbnail tissue mask says there is tissue (pure numpy).

Coordinates are level-0 pixel positions of the tiles' top-left corners, as openslide's
``read_region`` takes them. Resolution is asked as a target mpp (microns per pixel) or an
objective magnification, with the usual convention ``mpp = 10 / magnification`` (20x -> 0.5 um/px,
40x -> 0.25 um/px).

:func:`plan_tiling` picks the pyramid level to read: the coarsest level whose mpp does not exceed
the target (within ``tolerance``), so tiles are read at that level and shrunk to ``patch_size``
(never enlarged, except when even level 0 is coarser than the target).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MPP_TOLERANCE = 0.05


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification to microns per pixel: ``10 / magnification`` (20x -> 0.5)."""
    if not magnification > 0:
        raise ValueError(f"magnification must be positive, got {magnification}")
    return 10.0 / magnification


def tissue_mask(thumbnail: np.ndarray, *, min_saturation: float | None = None) -> np.ndarray:
    """Boolean ``(h, w)`` mask of tissue in an RGB ``(h, w, 3)`` uint8 thumbnail.

    Delegates to :func:`medcl.wsi.tissue.detect_tissue` with its default rules (background,
    pen marks, Otsu on saturation, morphological clean-up); ``min_saturation`` fixes the
    saturation threshold instead of Otsu.
    """
    from medcl.wsi.tissue import detect_tissue

    return detect_tissue(thumbnail, saturation_threshold=min_saturation, contour_tolerance=0.0).mask


def grid_coords(dimensions: tuple[int, int], tile: int, *, stride: int | None = None) -> np.ndarray:
    """Top-left corners ``(N, 2)`` (x, y) of full tiles of side ``tile`` over ``(width, height)``,
    row by row (y outer, x inner).

    Example:
        >>> grid_coords((10, 6), 4).tolist()
        [[0, 0], [4, 0]]
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    step = stride or tile
    if step < 1:
        raise ValueError(f"stride must be >= 1, got {step}")
    w, h = dimensions
    xs = np.arange(0, w - tile + 1, step)
    ys = np.arange(0, h - tile + 1, step)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return grid.astype(np.int64)


def tissue_fraction(
    coords: np.ndarray, tile: int, mask: np.ndarray, scale: float | tuple[float, float]
) -> np.ndarray:
    """Share of tissue pixels of ``mask`` under each tile, for all tiles at once.

    Each tile ``(x, y)`` of side ``tile`` (level-0 px) covers the mask window starting at
    ``(floor(x * sx), floor(y * sy))`` with sides ``max(1, round(tile * s))``, clipped to the
    mask; the fraction is the window's mean (0 for a window wholly outside). Box sums come from
    one integral image, so the cost does not depend on the tile size, or, for grids of few tiles
    (where that is cheaper, e.g. a small slide), from counting each window directly.

    Args:
        coords: ``(N, 2)`` level-0 (x, y).
        tile: tile side in level-0 px.
        mask: ``(h, w)`` bool.
        scale: mask px per level-0 px, one number or ``(sx, sy)``.

    Returns:
        ``(N,)`` float64 in [0, 1].
    """
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = mask.shape
    side_x, side_y = max(1, round(tile * sx)), max(1, round(tile * sy))
    x0 = np.clip(np.floor(coords[:, 0] * sx).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] * sy).astype(np.int64), 0, h)
    x1, y1 = np.minimum(x0 + side_x, w), np.minimum(y0 + side_y, h)
    area = (x1 - x0) * (y1 - y0)
    # Counting each window costs ~1 us a tile plus ~0.2 ns a pixel (numpy's popcount); the
    # integral image ~10 ns a mask pixel whatever the grid: count directly when that is cheaper.
    if 100 * len(coords) + int(area.sum()) // 50 < h * w:
        total = np.array(
            [np.count_nonzero(mask[a:b, c:d]) for a, b, c, d in zip(y0, y1, x0, x1, strict=True)],
            dtype=np.int64,
        )
        return np.where(area > 0, total / np.maximum(area, 1), 0.0)
    # int32 holds any count of a mask under 2**31 px, and the in-place sums halve the time
    integral = np.zeros((h + 1, w + 1), dtype=np.int32 if h * w < 2**31 else np.int64)
    inner = integral[1:, 1:]
    np.cumsum(mask, axis=1, dtype=integral.dtype, out=inner)
    np.cumsum(inner, axis=0, out=inner)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


@dataclass(frozen=True)
class TilingPlan:
    """How to cut one slide into tiles (sizes in px; ``*_level0`` in level-0 px).

    Attributes:
        level: pyramid level read.
        read_size: tile side read at ``level`` (then resized to ``patch_size``).
        patch_size: tile side at the target resolution.
        patch_size_level0: tile side in level-0 px.
        stride_level0: distance between neighbouring tiles in level-0 px.
        target_mpp, mpp: target and level-0 microns per pixel.
        overlap: overlap between neighbours at the target resolution.
        level0_width, level0_height: slide size.
    """

    level: int
    read_size: int
    patch_size: int
    patch_size_level0: int
    stride_level0: int
    target_mpp: float
    mpp: float
    overlap: int
    level0_width: int
    level0_height: int

    def as_attrs(self) -> dict[str, Any]:
        """The plan as coords-HDF5 attributes (``patch_level`` = ``level``)."""
        out = asdict(self)
        out["patch_level"] = out.pop("level")
        out.pop("stride_level0")
        return out


def plan_tiling(
    dimensions: tuple[int, int],
    level_downsamples: Sequence[float],
    mpp: float,
    *,
    target_mpp: float,
    patch_size: int,
    overlap: int = 0,
    tolerance: float = MPP_TOLERANCE,
) -> TilingPlan:
    """Choose the level and sizes to tile a slide at ``target_mpp``.

    ``downsample = target_mpp / mpp``; the level is the coarsest with ``level_downsample <=
    downsample * (1 + tolerance)``. When that level is within ``tolerance`` of the target the
    tile is read as is (``read_size = patch_size``, ``patch_size_level0 = round(patch_size *
    level_downsample)``); otherwise ``read_size = round(patch_size * downsample /
    level_downsample)`` and ``patch_size_level0 = round(patch_size * downsample)``. The stride
    is ``patch_size - overlap`` at the target resolution, scaled the same way.

    Example:
        >>> p = plan_tiling((4000, 3000), [1.0, 4.0], 0.25, target_mpp=0.5, patch_size=256)
        >>> (p.level, p.read_size, p.patch_size_level0)
        (0, 512, 512)
    """
    if not mpp > 0 or not target_mpp > 0:
        raise ValueError(f"mpp and target_mpp must be positive, got {mpp} and {target_mpp}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not 0 <= overlap < patch_size:
        raise ValueError(f"overlap must be in [0, patch_size), got {overlap}")
    downsample = target_mpp / mpp
    level = 0
    for index, level_ds in enumerate(level_downsamples):
        if level_ds <= downsample * (1 + tolerance):
            level = index
    level_ds = float(level_downsamples[level])
    ratio = downsample / level_ds
    if abs(ratio - 1.0) <= tolerance:
        read_size = patch_size
        effective = level_ds  # read the level as it is
    else:
        read_size = max(1, round(patch_size * ratio))
        effective = downsample
    if ratio < 1.0 - tolerance:
        log.warning(
            "target %.3g um/px is finer than level 0 (%.3g um/px): tiles are enlarged",
            target_mpp,
            mpp,
        )
    return TilingPlan(
        level=level,
        read_size=read_size,
        patch_size=patch_size,
        patch_size_level0=max(1, round(patch_size * effective)),
        stride_level0=max(1, round((patch_size - overlap) * effective)),
        target_mpp=float(target_mpp),
        mpp=float(mpp),
        overlap=overlap,
        level0_width=int(dimensions[0]),
        level0_height=int(dimensions[1]),
    )


def tile_tissue(
    plan: TilingPlan, mask: np.ndarray, *, min_tissue: float
) -> tuple[np.ndarray, np.ndarray]:
    """Grid of ``plan`` kept where the tissue fraction under ``mask`` is >= ``min_tissue``
    (``min_tissue = 0`` keeps the tiles touching any tissue).

    ``mask`` ``(h, w)`` covers the whole slide (a thumbnail mask); its x and y scales are
    ``w / level0_width`` and ``h / level0_height``.

    Returns:
        coords ``(N, 2)`` int64 level-0 (x, y) and fractions ``(N,)`` float32.
    """
    dims = (plan.level0_width, plan.level0_height)
    coords = grid_coords(dims, plan.patch_size_level0, stride=plan.stride_level0)
    scale = (mask.shape[1] / dims[0], mask.shape[0] / dims[1])
    fraction = tissue_fraction(coords, plan.patch_size_level0, mask, scale)
    keep = fraction >= min_tissue if min_tissue > 0 else fraction > 0
    return coords[keep], fraction[keep].astype(np.float32)
