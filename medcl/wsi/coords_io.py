"""Tile-coordinate HDF5 files (``patches/<stem>.h5``): writer and a reader that also takes
CLAM and TRIDENT files.

Layout (the WSI contract): dataset ``coords`` ``(N, 2)`` int64 level-0 (x, y) top-left corners,
dataset ``tissue_fraction`` ``(N,)`` float32, and on ``coords`` the attrs ``patch_size``,
``patch_level``, ``patch_size_level0``, ``read_size``, ``target_mpp``, ``mpp``, ``overlap``,
``level0_width``, ``level0_height``, ``slide``.

Files from other tools miss some attrs. The reader fills what it can: ``patch_level`` 0;
``target_mpp`` / ``mpp`` from TRIDENT's ``target_magnification`` / ``level0_magnification``
(``mpp = 10 / magnification``); ``patch_size_level0`` from CLAM's ``downsample``;
``read_size`` = ``patch_size_level0`` for a level-0 file that has both sizes (TRIDENT reads
level 0 and resizes), else ``patch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import InvalidInputError


@dataclass(frozen=True)
class CoordsAttrs:
    """Attributes of a tile grid (see the module docstring); None when a file lacks them."""

    patch_size: int | None = None
    patch_level: int = 0
    patch_size_level0: int | None = None
    read_size: int | None = None
    target_mpp: float | None = None
    mpp: float | None = None
    overlap: int = 0
    level0_width: int | None = None
    level0_height: int | None = None
    slide: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TileGrid:
    """``coords`` ``(N, 2)`` int64 level-0 (x, y), ``attrs``, ``tissue_fraction`` ``(N,)`` or
    None."""

    coords: np.ndarray
    attrs: CoordsAttrs
    tissue_fraction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.coords)


_INT_KEYS = (
    "patch_size",
    "patch_level",
    "patch_size_level0",
    "read_size",
    "overlap",
    "level0_width",
    "level0_height",
)
_KNOWN = {f.name for f in fields(CoordsAttrs)} - {"extra"}


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size != 1 else value.reshape(-1)[0].item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_coords(
    path: str | PathLike[str],
    coords: np.ndarray,
    attrs: CoordsAttrs,
    tissue_fraction: np.ndarray | None = None,
) -> Path:
    """Write a coords HDF5 atomically (``<path>.tmp`` then rename); returns the path.

    Args:
        coords: ``(N, 2)`` level-0 (x, y); N may be 0.
        tissue_fraction: ``(N,)``; zeros when None.
    """
    import h5py

    array = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    frac = np.zeros(len(array)) if tissue_fraction is None else np.asarray(tissue_fraction)
    if frac.shape != (len(array),):
        raise ValueError(f"tissue_fraction must be ({len(array)},), got {frac.shape}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("coords", data=array, maxshape=(None, 2))
        f.create_dataset("tissue_fraction", data=frac.astype(np.float32))
        values = {name: getattr(attrs, name) for name in _KNOWN}
        for key, value in {**attrs.extra, **values}.items():
            if value is not None:
                ds.attrs[key] = value
    tmp.replace(target)
    return target


def _derive(raw: dict[str, Any]) -> CoordsAttrs:
    known: dict[str, Any] = {}
    for key in _KNOWN:
        if key in raw and raw[key] is not None:
            value = raw[key]
            known[key] = int(value) if key in _INT_KEYS else value
    if "target_mpp" not in known and raw.get("target_magnification"):
        known["target_mpp"] = 10.0 / float(raw["target_magnification"])
    if "mpp" not in known and raw.get("level0_magnification"):
        known["mpp"] = 10.0 / float(raw["level0_magnification"])
    if "slide" not in known and raw.get("name") is not None:
        known["slide"] = str(raw["name"])
    level = known.setdefault("patch_level", 0)
    size = known.get("patch_size")
    downsample = raw.get("downsample")
    if "patch_size_level0" not in known and size is not None:
        if downsample is not None:
            factor = float(np.asarray(downsample, dtype=np.float64).reshape(-1)[0])
            known["patch_size_level0"] = round(size * factor)
        elif level == 0:
            known["patch_size_level0"] = size
    if "read_size" not in known and size is not None:
        level0 = known.get("patch_size_level0")
        known["read_size"] = level0 if level == 0 and level0 is not None else size
    extra = {k: v for k, v in raw.items() if k not in _KNOWN}
    return CoordsAttrs(**known, extra=extra)


def read_coords(path: str | PathLike[str]) -> TileGrid:
    """Read a coords HDF5 (ours, CLAM's or TRIDENT's).

    Raises:
        InvalidInputError: not an HDF5 file, no ``coords`` dataset, or not ``(N, 2)``.
    """
    import h5py

    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(file, "coords file not found")
    try:
        with h5py.File(file, "r") as f:
            if "coords" not in f:
                raise InvalidInputError(file, "no 'coords' dataset (not a tile-coordinates file)")
            ds = f["coords"]
            coords = np.asarray(ds[()])
            raw = {str(k): _scalar(v) for k, v in ds.attrs.items()}
            for k, v in f.attrs.items():  # some tools put attrs on the file
                raw.setdefault(str(k), _scalar(v))
            fraction = np.asarray(f["tissue_fraction"][()]) if "tissue_fraction" in f else None
    except OSError as exc:
        raise InvalidInputError(file, f"not a readable HDF5 file ({exc})") from None
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InvalidInputError(file, f"'coords' must be (N, 2), got {coords.shape}")
    if fraction is not None and fraction.shape != (len(coords),):
        raise InvalidInputError(
            file, f"'tissue_fraction' has {fraction.shape} values for {len(coords)} tiles"
        )
    return TileGrid(coords.astype(np.int64), _derive(raw), fraction)
