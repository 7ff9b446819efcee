"""Reorientation of voxel arrays to RAS (or any axis codes): the one place it is done.

Every reader of a volume that shows or slices it in patient directions (the inspect preview, the
review viewer, slice preparation for pretraining and fine-tuning, volume preprocessing) uses these
functions, so they cannot disagree. The axis order is nibabel's ``io_orientation``: each array
axis goes to the world axis its affine column is closest to, then axes are flipped so that index
order runs towards R, A and S. Pure functions of arrays and affines; no file access.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

RAS = "RAS"


def orientation_transform(affine: np.ndarray, axcodes: str = RAS) -> np.ndarray:
    """nibabel orientation ``(3, 2)`` taking the array axes of ``affine`` to ``axcodes``.

    Args:
        affine: ``(4, 4)`` voxel -> world (RAS mm) matrix.
        axcodes: target axis codes, one of L/R, A/P, S/I each (``"RAS"``, ``"LPS"``, ...).
    """
    source = io_orientation(np.asarray(affine, dtype=np.float64))
    return np.asarray(ornt_transform(source, axcodes2ornt(tuple(axcodes.upper()))))


def reorient_array(
    array: np.ndarray, affine: np.ndarray, axcodes: str = RAS
) -> tuple[np.ndarray, np.ndarray]:
    """Permute / flip ``array`` so its axes run along ``axcodes``; world positions unchanged.

    Parameters
    ----------
    array : (X, Y, Z[, ...]) ndarray
        Voxels on the grid of ``affine`` (extra trailing axes are carried along).
    affine : (4, 4) ndarray
        Voxel -> world matrix of ``array``.
    axcodes : str
        Target axis codes (default ``"RAS"``).

    Returns
    -------
    (reoriented array (a view where possible), its (4, 4) float64 affine)
    """
    ornt = orientation_transform(affine, axcodes)
    out = np.asarray(apply_orientation(array, ornt))
    new_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, array.shape[:3])
    return out, new_affine


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` (on ``affine``'s grid) with axes running to Right, Anterior, Superior."""
    return reorient_array(array, affine, RAS)[0]


def from_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras`: a RAS array back onto the grid of ``affine``."""
    forward = io_orientation(np.asarray(affine, dtype=np.float64))
    inverse = ornt_transform(axcodes2ornt(tuple(RAS)), forward)
    return np.asarray(apply_orientation(array, inverse))


def ras_shape(shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """Shape ``(X, Y, Z)`` of a volume of ``shape`` (on ``affine``'s grid) once reoriented."""
    ornt = orientation_transform(affine, RAS)
    out = [0, 0, 0]
    for k, (axis, _) in enumerate(ornt):
        out[int(axis)] = int(shape[k])
    return out[0], out[1], out[2]


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in mm along the R, A, S axes of the RAS-reoriented array.

    The size of array axis ``k`` is the norm of the affine's column ``k``; reorientation moves it
    to the world axis that column points along.
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.sqrt((matrix**2).sum(axis=0))
    ornt = orientation_transform(affine, RAS)
    out = [1.0, 1.0, 1.0]
    for k, (axis, _) in enumerate(ornt):
        out[int(axis)] = float(sizes[k])
    return out[0], out[1], out[2]
