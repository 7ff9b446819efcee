"""Tiles of one slide as a torch Dataset, read lazily (one slide handle per worker process).

The coordinates come from a coords HDF5 (``patches/<stem>.h5``, see the WSI contract) read by
:func:`medcl.wsi.coords_io.read_coords` (ours, CLAM's or TRIDENT's): a
:class:`~medcl.wsi.coords_io.TileGrid` of level-0 top-left corners with ``patch_level``,
``patch_size`` and ``read_size`` (side read at ``patch_level``) in its attrs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import Dataset

from medcl.io.slides import Slide, open_slide
from medcl.wsi.coords_io import TileGrid

Transform = Callable[[np.ndarray], torch.Tensor]


def plain_value(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (numpy scalars, bytes and arrays converted)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class TileDataset(Dataset[tuple[torch.Tensor, int]]):
    """``dataset[i] -> (transform(tile_i) (3, H, W), i)`` for the tiles of one slide.

    Each tile is read with :meth:`Slide.read_region` at ``level`` (``read_size`` pixels square),
    resized to ``patch_size`` when the sizes differ (Lanczos, as ``Slide.read_region_mpp``), then
    passed to ``transform`` (an encoder's ``eval_transform``). The slide is opened on first use in
    each process (so the dataset pickles into DataLoader workers) and never read whole.

    Args:
        slide_path: the slide file.
        coords: ``(N, 2)`` level-0 top-left corners.
        level: pyramid level to read.
        read_size: tile side in pixels at ``level``.
        patch_size: tile side after resizing.
        transform: ``(h, w, 3) uint8 -> (3, H, W)`` tensor.
        mpp: microns per pixel for slides without it in their metadata (not needed to read).
    """

    def __init__(
        self,
        slide_path: str | Path,
        coords: npt.ArrayLike,
        *,
        level: int,
        read_size: int,
        patch_size: int,
        transform: Transform,
        mpp: float | None = None,
    ) -> None:
        coords = np.asarray(coords, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"coords must be (N, 2), got {coords.shape}")
        if read_size < 1 or patch_size < 1:
            raise ValueError(
                f"read_size and patch_size must be >= 1, got {read_size}, {patch_size}"
            )
        self.slide_path = Path(slide_path)
        self.coords = coords
        self.level = int(level)
        self.read_size = int(read_size)
        self.patch_size = int(patch_size)
        self.transform = transform
        self.mpp = mpp
        self._slide: Slide | None = None
        self._pid: int | None = None

    @classmethod
    def from_grid(
        cls,
        slide_path: str | Path,
        grid: TileGrid,
        transform: Transform,
        mpp: float | None = None,
    ) -> TileDataset:
        """The dataset of the tiles of a :class:`~medcl.wsi.coords_io.TileGrid`.

        ``read_size`` defaults to ``patch_size`` when the grid's attrs lack it.

        Raises:
            ValueError: the grid has no ``patch_size`` (check it where the file is known).
        """
        attrs = grid.attrs
        if attrs.patch_size is None:
            raise ValueError("the tile grid has no patch_size")
        return cls(
            slide_path,
            grid.coords,
            level=attrs.patch_level,
            read_size=attrs.read_size if attrs.read_size is not None else attrs.patch_size,
            patch_size=attrs.patch_size,
            transform=transform,
            mpp=mpp,
        )

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, mpp=self.mpp)
            self._pid = os.getpid()
        return self._slide

    def read_tile(self, index: int) -> np.ndarray:
        """Tile ``index`` as ``(patch_size, patch_size, 3)`` uint8 RGB (before the transform)."""
        x, y = (int(v) for v in self.coords[index])
        side = self.read_size
        rgb = self._open().read_region((x, y), self.level, (side, side))
        if side != self.patch_size:
            size = (self.patch_size, self.patch_size)
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        return rgb

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.read_tile(index)), int(index)

    def close(self) -> None:
        """Close this process's slide handle (reopened on the next read)."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None  # slide handles do not pickle; each worker opens its own
        state["_pid"] = None
        return state
