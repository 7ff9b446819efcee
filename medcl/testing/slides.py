"""Synthetic whole-slide images: H&E-like tissue with a known mask, and a pyramidal TIFF writer.

The writer puts every pyramid level in its own top-level TIFF page (reduced levels flagged
``subfiletype=1``), tiled, with X/YResolution in pixels per centimetre: openslide reads such a
file as ``generic-tiff`` with ``openslide.mpp-x`` set from the resolution tags, and tiffslide as a
series with ``tiffslide.mpp-x``. (A SubIFD pyramid would be seen by openslide and MONAI as a
single level.) The ImageDescription also carries Aperio-style ``MPP = ...|AppMag = ...`` fields,
which :class:`medcl.io.slides.Slide` reads for the magnification.

Large slides are written lazily from a tile callable, never held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

TileFn = Callable[[int, int, int, int, int], np.ndarray]
"""``tile_fn(y, x, h, w, step) -> (h, w, 3) uint8``: the image sampled at level-0 rows
``y + i * step`` and columns ``x + j * step`` (``step`` = level downsample; 1 for level 0)."""

Compression = Literal["jpeg", "zlib"] | None

BACKGROUND = (245, 244, 246)
EOSIN = np.array([232.0, 150.0, 196.0])
HEMATOXYLIN = np.array([88.0, 58.0, 140.0])
_NUCLEUS_CELL = 12  # level-0 pixels between candidate nucleus centres
_NUCLEUS_RADIUS = 3.5


class SyntheticTissue:
    """Deterministic H&E-like tissue, evaluable at any level-0 coordinates and sampling step.

    Tissue is a union of ``n_blobs`` random ellipses (pink eosin with a soft texture and purple
    nuclei) on a near-white background. Usable as a :data:`TileFn` for
    :func:`write_pyramidal_tiff`, so a 40,000 x 40,000 slide can be written tile by tile.

    Args:
        height, width: level-0 size in pixels.
        seed: random seed; same seed, same slide.
        n_blobs: number of tissue ellipses.
    """

    def __init__(self, height: int, width: int, *, seed: int = 0, n_blobs: int = 6) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        if n_blobs < 0:
            raise ValueError(f"n_blobs must be >= 0, got {n_blobs}")
        self.height, self.width, self.seed = height, width, seed
        rng = np.random.default_rng(seed)
        size = min(height, width)
        self._blobs = [
            (
                rng.uniform(0.15, 0.85) * height,
                rng.uniform(0.15, 0.85) * width,
                rng.uniform(0.08, 0.22) * size,
                rng.uniform(0.08, 0.22) * size,
                rng.uniform(0.0, math.pi),
            )
            for _ in range(n_blobs)
        ]

    def _grid(self, y: int, x: int, h: int, w: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        # Sample each output pixel at the centre of the level-0 block it stands for.
        offset = (step - 1) / 2.0
        ys = y + np.arange(h, dtype=np.float64)[:, None] * step + offset
        xs = x + np.arange(w, dtype=np.float64)[None, :] * step + offset
        return ys, xs

    def _inside(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        mask = np.zeros(np.broadcast_shapes(ys.shape, xs.shape), dtype=bool)
        for cy, cx, ry, rx, angle in self._blobs:
            dy, dx = ys - cy, xs - cx
            u = dx * math.cos(angle) + dy * math.sin(angle)
            v = -dx * math.sin(angle) + dy * math.cos(angle)
            mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        in_bounds = (ys < self.height) & (xs < self.width)
        return mask & in_bounds

    def mask(self, y: int, x: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """``(h, w)`` bool tissue mask sampled like :meth:`__call__`."""
        return self._inside(*self._grid(y, x, h, w, step))

    def __call__(self, y: int, x: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB; rows ``y + i*step``, columns ``x + j*step`` of level 0."""
        ys, xs = self._grid(y, x, h, w, step)
        tissue = self._inside(ys, xs)
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = BACKGROUND
        if not tissue.any():
            return out
        # Colour only the tissue pixels (1-D), which keeps large slides cheap to generate.
        ty = np.broadcast_to(ys, tissue.shape)[tissue]
        tx = np.broadcast_to(xs, tissue.shape)[tissue]
        texture = 0.5 + 0.25 * np.sin(ty / 23.0 + 0.7 * np.sin(tx / 41.0)) * np.cos(tx / 17.0)
        # Nuclei: one candidate per lattice cell, kept by a hash of (cell, seed).
        cy = np.floor(ty / _NUCLEUS_CELL).astype(np.int64)
        cx = np.floor(tx / _NUCLEUS_CELL).astype(np.int64)
        key = (cy * 73856093) ^ (cx * 19349663) ^ (self.seed * 83492791 + 1)
        key = (key * 2654435761) & 0xFFFFFFFF
        centre_y = (cy + 0.5) * _NUCLEUS_CELL + (((key >> 8) & 0xFF) / 255.0 * 4.0 - 2.0)
        centre_x = (cx + 0.5) * _NUCLEUS_CELL + (((key >> 16) & 0xFF) / 255.0 * 4.0 - 2.0)
        radius = max(_NUCLEUS_RADIUS, step / 2.0)  # stay visible at coarse sampling
        nucleus = ((key & 0xFF) < 90) & ((ty - centre_y) ** 2 + (tx - centre_x) ** 2 <= radius**2)
        colour = EOSIN * (0.9 + 0.2 * texture[:, None])
        colour[nucleus] = HEMATOXYLIN
        out[tissue] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        return out


def synthetic_tissue_image(
    h: int, w: int, *, seed: int = 0, n_blobs: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """H&E-like tissue on white with its exact mask.

    Returns:
        image: ``(h, w, 3)`` uint8 RGB; background pixels are exactly :data:`BACKGROUND`.
        tissue_mask: ``(h, w)`` bool, True on tissue.
    """
    tissue = SyntheticTissue(h, w, seed=seed, n_blobs=n_blobs)
    return tissue(0, 0, h, w), tissue.mask(0, 0, h, w)


def _downscale2(image: np.ndarray) -> np.ndarray:
    """2x2 block mean of ``(H, W, C)`` -> ``(H // 2, W // 2, C)`` (rounded uint8)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    blocks = image[: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _tiles_from_array(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = image.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.full((tile, tile, 3), 255, dtype=np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def _tiles_from_fn(
    tile_fn: TileFn, shape: tuple[int, int], step: int, tile: int
) -> Iterator[np.ndarray]:
    h, w = shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            th, tw = min(tile, h - y), min(tile, w - x)
            part = np.asarray(tile_fn(y * step, x * step, th, tw, step))
            if part.shape != (th, tw, 3) or part.dtype != np.uint8:
                raise ValueError(
                    f"tile_fn returned {part.shape} {part.dtype}, expected ({th}, {tw}, 3) uint8"
                )
            block = np.full((tile, tile, 3), 255, dtype=np.uint8)
            block[:th, :tw] = part
            yield block


def write_pyramidal_tiff(
    path: str | PathLike[str],
    image: np.ndarray | None = None,
    *,
    tile_fn: TileFn | None = None,
    shape: tuple[int, int] | None = None,
    mpp: float = 0.5,
    levels: int = 3,
    tile: int = 256,
    compression: Compression = "jpeg",
    quality: int = 90,
    magnification: float | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF that openslide and tiffslide both read as ``levels`` levels.

    Level ``k`` has downsample ``2**k`` and size ``(H // 2**k, W // 2**k)``; from ``image`` it
    is the 2x2 block mean of level ``k - 1``, from ``tile_fn`` it is the callable sampled with
    ``step = 2**k`` (tiles are generated lazily, so the slide may be far larger than memory).

    Args:
        path: output ``.tif`` file.
        image: ``(H, W, 3)`` uint8 RGB level 0; or give ``tile_fn`` and ``shape`` instead.
        tile_fn: see :data:`TileFn`.
        shape: ``(H, W)`` of level 0 when writing from ``tile_fn``.
        mpp: level-0 microns per pixel, stored as X/YResolution (pixels per cm) on every level.
        levels: number of pyramid levels.
        tile: tile edge in pixels (multiple of 16).
        compression: ``"jpeg"`` (lossy, ``quality``), ``"zlib"`` or None (lossless).
        magnification: objective power written as ``AppMag`` in the description.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if (image is None) == (tile_fn is None):
        raise ValueError("give exactly one of image or tile_fn")
    if image is not None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
    elif shape is None:
        raise ValueError("shape=(H, W) is required with tile_fn")
    else:
        height, width = shape
    if levels < 1 or min(height, width) >> (levels - 1) < 1:
        raise ValueError(f"cannot make {levels} levels from a {height}x{width} image")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    description = f"medcl synthetic pyramidal TIFF|MPP = {mpp:g}"
    if magnification is not None:
        description += f"|AppMag = {magnification:g}"
    out = Path(path)
    bigtiff = height * width * 3 * 4 / 3 > 2**31  # uncompressed estimate with the pyramid
    compressionargs = {"level": quality} if compression == "jpeg" else None
    current = image
    with tifffile.TiffWriter(out, bigtiff=bigtiff) as writer:
        for level in range(levels):
            step = 2**level
            level_shape = (height // step, width // step)
            if current is not None:
                if level > 0:
                    current = _downscale2(current)
                tiles = _tiles_from_array(current, tile)
            else:
                assert tile_fn is not None
                tiles = _tiles_from_fn(tile_fn, level_shape, step, tile)
            pixels_per_cm = 1e4 / (mpp * step)
            writer.write(
                tiles,
                shape=(*level_shape, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=1 if level else 0,
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                description=description if level == 0 else None,
                metadata=None,
                compression=compression,
                compressionargs=compressionargs,
            )
    return out
