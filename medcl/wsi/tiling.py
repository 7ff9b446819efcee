"""Tile grids over a slide, kept where a thumbnail tissue mask says there is tissue (pure numpy).

Coordinates are level-0 pixel positions of the tiles' top-left corners, as openslide's
``read_region`` takes them.
"""

from __future__ import annotations

import numpy as np


def tissue_mask(thumbnail: np.ndarray, *, min_saturation: float | None = None) -> np.ndarray:
    """Boolean ``(h, w)`` mask of tissue in an RGB ``(h, w, 3)`` uint8 thumbnail.

    Tissue is coloured (H&E), background is white or grey: pixels whose HSV saturation exceeds an
    Otsu threshold (or ``min_saturation`` when given) are tissue.
    """
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    if thumbnail.ndim != 3 or thumbnail.shape[2] < 3:
        raise ValueError(f"thumbnail must be (h, w, 3), got {thumbnail.shape}")
    sat = rgb2hsv(thumbnail[..., :3])[..., 1]
    if min_saturation is None:
        if float(sat.max() - sat.min()) < 1e-6:
            return np.zeros(sat.shape, dtype=bool)
        min_saturation = max(float(threshold_otsu(sat)), 0.05)
    return np.asarray(sat > min_saturation)


def grid_coords(dimensions: tuple[int, int], tile: int, *, stride: int | None = None) -> np.ndarray:
    """Top-left corners ``(N, 2)`` (x, y) of full tiles of side ``tile`` over ``(width, height)``.

    Example:
        >>> grid_coords((10, 6), 4).tolist()
        [[0, 0], [4, 0]]
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    step = stride or tile
    w, h = dimensions
    xs = np.arange(0, w - tile + 1, step)
    ys = np.arange(0, h - tile + 1, step)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return grid.astype(np.int64)


def tissue_fraction(coords: np.ndarray, tile: int, mask: np.ndarray, scale: float) -> np.ndarray:
    """Share of tissue pixels of ``mask`` under each tile; ``scale`` = mask pixels per coordinate
    unit (mask width / slide width)."""
    out = np.zeros(len(coords))
    side = max(1, round(tile * scale))
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x * scale), int(y * scale)
        window = mask[y0 : y0 + side, x0 : x0 + side]
        out[i] = float(window.mean()) if window.size else 0.0
    return out
