"""Tiles of one slide as a torch Dataset, read lazily (one slide handle per worker process).

The coordinates come from a coords HDF5 (``patches/<stem>.h5``, see the WSI contract): dataset
``coords`` ``(N, 2)`` int64 of level-0 top-left corners, with attrs ``patch_level``,
``patch_size``, ``read_size`` (side read at ``patch_level``; defaults to ``patch_size``) and
``patch_size_level0``. CLAM / TRIDENT coords files (only ``patch_level`` and ``patch_size``) are
read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import Dataset

from medcl.errors import InvalidInputError
from medcl.io.slides import Slide, open_slide

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


@dataclass(frozen=True)
class CoordsFile:
    """The tiles of one slide as a coords HDF5 describes them.

    Attributes:
        coords: ``(N, 2)`` int64, (x, y) top-left corners in level-0 pixels.
        patch_level: pyramid level the tiles are read from.
        patch_size: tile side in pixels after resizing (the features' input tile).
        read_size: tile side read at ``patch_level`` (``patch_size`` unless the level's
            resolution differs from the target one).
        attrs: every attribute of the ``coords`` dataset, as plain Python values.
    """

    coords: np.ndarray
    patch_level: int
    patch_size: int
    read_size: int
    attrs: dict[str, Any] = field(default_factory=dict)


def read_coords_file(path: str | Path) -> CoordsFile:
    """Read a coords HDF5 (ours, CLAM's or TRIDENT's).

    Raises:
        InvalidInputError: not an HDF5 file, no ``coords`` dataset, a shape other than
            ``(N, 2)``, or no ``patch_size`` attribute.
    """
    p = Path(path)
    if not p.is_file() or not h5py.is_hdf5(p):
        raise InvalidInputError(p, "not an HDF5 coords file")
    with h5py.File(p, "r") as f:
        if "coords" not in f:
            raise InvalidInputError(p, "no 'coords' dataset in the coords file")
        ds = f["coords"]
        coords = np.asarray(ds[()])
        attrs = {k: plain_value(v) for k, v in ds.attrs.items()}
    if coords.size == 0:  # an empty bag may be stored as (0,)
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InvalidInputError(p, f"'coords' must be (N, 2), got {coords.shape}")
    if "patch_size" not in attrs:
        raise InvalidInputError(p, "the 'coords' dataset has no 'patch_size' attribute")
    patch_size = int(attrs["patch_size"])
    return CoordsFile(
        coords=coords.astype(np.int64, copy=False),
        patch_level=int(attrs.get("patch_level", 0)),
        patch_size=patch_size,
        read_size=int(attrs.get("read_size", patch_size)),
        attrs=attrs,
    )


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
    def from_coords_file(
        cls,
        slide_path: str | Path,
        coords_file: CoordsFile,
        transform: Transform,
        mpp: float | None = None,
    ) -> TileDataset:
        """The dataset of the tiles listed in a :class:`CoordsFile`."""
        return cls(
            slide_path,
            coords_file.coords,
            level=coords_file.patch_level,
            read_size=coords_file.read_size,
            patch_size=coords_file.patch_size,
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
