"""Read feature bags whatever wrote them: medcl, CLAM (h5 / .pt), TRIDENT, mopadi.

Layouts accepted by :func:`read_bag_file`:

- medcl / TRIDENT / CLAM HDF5: ``features`` ``(N, D)`` (CLAM may store ``(1, N, D)``) with an
  optional ``coords`` ``(N, 2)``; attrs of the file and of ``coords`` are kept.
- mopadi HDF5: ``feats`` ``(N, D)`` with an optional ``coords``.
- CLAM ``.pt`` / ``.pth``: a ``(N, D)`` tensor, or a dict with ``features`` / ``feats`` and an
  optional ``coords``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medcl.errors import InvalidInputError
from medcl.wsi.tile_dataset import plain_value

FEATURE_KEYS = ("features", "feats")
BAG_SUFFIXES = (".h5", ".hdf5", ".pt", ".pth")


@dataclass
class BagFile:
    """One slide's features as stored on disk.

    Attributes:
        features: ``(N, D)`` float32.
        coords: ``(N, 2)`` int64 level-0 tile corners, or ``None`` when the file has none.
        attrs: the ``coords`` dataset's attrs updated with the file's attrs (plain values).
    """

    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _check(path: Path, features: Any, coords: Any) -> tuple[np.ndarray, np.ndarray | None]:
    feats = np.asarray(features)
    if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM sometimes keeps a batch axis
        feats = feats[0]
    if feats.ndim != 2:
        raise InvalidInputError(path, f"features must be (N, D), got shape {feats.shape}")
    if not np.issubdtype(feats.dtype, np.number):
        raise InvalidInputError(path, f"features must be numbers, got dtype {feats.dtype}")
    feats = feats.astype(np.float32, copy=False)
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise InvalidInputError(path, f"features contain NaN or infinite values ({bad} rows)")
    if coords is None:
        return feats, None
    xy = np.asarray(coords)
    if xy.ndim == 3 and xy.shape[0] == 1:
        xy = xy[0]
    if xy.size == 0 and len(feats) == 0:
        xy = xy.reshape(0, 2)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InvalidInputError(path, f"coords must be (N, 2), got shape {xy.shape}")
    if len(xy) != len(feats):
        raise InvalidInputError(
            path, f"{len(feats)} feature rows but {len(xy)} coords; the file is inconsistent"
        )
    return feats, xy.astype(np.int64, copy=False)


def _read_h5(path: Path) -> BagFile:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(path, f"cannot open the HDF5 file ({exc})") from None
    with f:
        key = next((k for k in FEATURE_KEYS if k in f and isinstance(f[k], h5py.Dataset)), None)
        if key is None:
            found = ", ".join(sorted(f.keys())) or "nothing"
            raise InvalidInputError(
                path, f"no feature dataset ('features' or 'feats'); the file holds {found}"
            )
        attrs = {k: plain_value(v) for k, v in f["coords"].attrs.items()} if "coords" in f else {}
        attrs.update({k: plain_value(v) for k, v in f.attrs.items()})
        if attrs.get("complete") is False:
            raise InvalidInputError(path, "unfinished features file (complete is False); re-run")
        coords = f["coords"][()] if "coords" in f else None
        feats, xy = _check(path, f[key][()], coords)
    return BagFile(feats, xy, attrs)


def _read_pt(path: Path) -> BagFile:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InvalidInputError(path, f"cannot load the .pt file ({exc})") from exc
    coords = None
    attrs: dict[str, Any] = {}
    if isinstance(obj, dict):
        key = next((k for k in FEATURE_KEYS if k in obj), None)
        if key is None:
            found = ", ".join(sorted(map(str, obj))) or "nothing"
            raise InvalidInputError(
                path, f"no feature tensor ('features' or 'feats'); the file holds {found}"
            )
        coords = obj.get("coords")
        attrs = {k: v for k, v in obj.items() if isinstance(v, int | float | str | bool)}
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise InvalidInputError(path, f"expected a (N, D) tensor, got {type(obj).__name__}")
    if isinstance(coords, torch.Tensor):
        coords = coords.numpy()
    feats, xy = _check(path, obj.detach().float().numpy(), coords)
    return BagFile(feats, xy, attrs)


def read_bag_file(path: str | Path) -> BagFile:
    """Read the bag of one slide (any layout of the module docstring).

    Raises:
        InvalidInputError: missing file, not HDF5 / torch, no feature dataset, features not
            ``(N, D)``, NaN or infinite values, coords not matching the features, or a medcl
            file whose extraction did not finish.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "bag file not found")
    if p.suffix.lower() in (".pt", ".pth"):
        return _read_pt(p)
    if not h5py.is_hdf5(p):
        raise InvalidInputError(p, "not an HDF5 file (expected a features .h5 or a .pt bag)")
    return _read_h5(p)


def list_bag_files(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Bag files (``.h5 .hdf5 .pt .pth``) in ``folder``, sorted; unfinished ``*.partial.h5``
    files are left out.

    Raises:
        InvalidInputError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(root, "not a folder of bag files")
    files = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p
        for p in files
        if p.is_file() and p.suffix.lower() in BAG_SUFFIXES and not p.name.endswith(".partial.h5")
    )
