"""Read and write 3D volumes: NIfTI (nibabel), NRRD (pynrrd), DICOM series (MONAI).

Every reader returns a :class:`Volume`: the voxel array in stored order and an affine mapping
voxel indices to RAS+ world millimetres (the nibabel convention). NRRD and DICOM store LPS world
coordinates; they are converted here, so affines from all formats are comparable.

Labels are read with :func:`read_label`, which checks that the label map lies on the image's voxel
grid (reorienting a label stored with flipped or permuted axes) and that its values are integers.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import pydicom
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError

from medcl.errors import AlignmentError, InvalidInputError
from medcl.io.dicom import NO_UID, select_series
from medcl.io.limits import check_count, check_dimensions, check_fits_file, max_voxels

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .dcm, or a folder holding a DICOM series"

# BIDS suffixes that name the contrast of an image (``sub-01_T2w.nii.gz`` -> ``"T2w"``).
BIDS_MODALITIES = frozenset(
    {"T1w", "T2w", "T2star", "FLAIR", "PD", "PDw", "T1map", "T2map", "UNIT1", "angio", "ct", "CT"}
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOM_ERRORS = (
    pydicom.errors.InvalidDicomError,
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    KeyError,
    IndexError,
)
_NIBABEL_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)


@dataclass
class Volume:
    """A 3D image or label map on a voxel grid.

    Attributes:
        array: (X, Y, Z) voxel values in stored order (one frame of a 4D file).
        affine: (4, 4) float64 matrix mapping voxel indices to RAS+ world coordinates in mm.
        path: the file or DICOM folder it came from.
        meta: ``format`` ('nifti' | 'nrrd' | 'dicom'), ``dtype`` and ``shape`` as stored,
            ``modality`` when known, ``series_uid`` for DICOM, ``frame``/``n_frames`` for 4D.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) voxel counts."""
        x, y, z = self.array.shape
        return int(x), int(y), int(z)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm (norms of the affine's columns)."""
        sx, sy, sz = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return float(sx), float(sy), float(sz)

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes, e.g. ``"RAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def modality(self) -> str | None:
        """DICOM Modality tag (``"CT"``) or BIDS suffix (``"T2w"``, ``"ct"``); None if unknown."""
        value = self.meta.get("modality")
        return str(value) if value else None


def bids_modality(path: str | Path) -> str | None:
    """The BIDS suffix of a file name (``sub-01_ses-1_T1w.nii.gz`` -> ``"T1w"``), else None."""
    name = Path(path).name
    for suffix in (*NIFTI_SUFFIXES, *NRRD_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    last = name.rsplit("_", 1)[-1]
    return last if "_" in name and last in BIDS_MODALITIES else None


def _pick_frame(
    path: Path, array: np.ndarray, frame: int | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Reduce a 2D/3D/4D array to (X, Y, Z); a 4D array needs ``frame`` (last axis)."""
    while array.ndim > 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3:
        if frame not in (None, 0):
            raise InvalidInputError(path, f"frame={frame} given but the volume is 3D (one frame)")
        return array, {}
    if array.ndim != 4:
        raise InvalidInputError(
            path, f"{array.ndim}D array of shape {array.shape}: expected 3D or 4D"
        )
    n = int(array.shape[3])
    if n == 1:
        return array[..., 0], {}
    if frame is None:
        raise InvalidInputError(
            path, f"4D volume with {n} frames: pass frame=0..{n - 1} (--frame) to pick one"
        )
    if not -n <= frame < n:
        raise InvalidInputError(path, f"frame={frame} is out of range: the volume has {n} frames")
    return np.asarray(array[..., frame]), {"frame": frame % n, "n_frames": n}


def check_voxels(path: Path, shape: tuple[object, ...], one_frame: bool) -> tuple[int, ...]:
    """Declared ``shape`` checked before reading: positive dimensions, and the voxels to be read
    (the first three axes when ``one_frame``, else all) within ``MEDCL_MAX_VOXELS``."""
    dims = tuple(check_dimensions(path, shape, "voxel dimensions"))
    read = dims[:3] if one_frame else dims
    check_count(path, read, limit=max_voxels(), unit="voxels", variable="MEDCL_MAX_VOXELS")
    return dims


def _read_nifti(path: Path, frame: int | None) -> Volume:
    try:
        img: Any = nib.load(path)
        shape = check_voxels(path, tuple(img.header.get_data_shape()), frame is not None)
        gz = path.name.lower().endswith(".gz")
        try:
            offset = int(img.header["vox_offset"])
        except (KeyError, ValueError, TypeError):
            offset = 0
        declared = math.prod(shape) * img.get_data_dtype().itemsize
        check_fits_file(path, offset + declared, path.stat().st_size, compressed=gz, what="voxels")
        n = shape[3] if len(shape) == 4 else 0
        if n > 1 and frame is not None and -n <= frame < n:
            data = np.asanyarray(img.dataobj[..., frame])  # read the one frame only
        else:
            data = np.asanyarray(img.dataobj)
    except _NIBABEL_ERRORS as exc:
        kind = "gzip-compressed NIfTI" if path.name.lower().endswith(".gz") else "NIfTI"
        problem = f"file is truncated or not a valid {kind} ({type(exc).__name__}: {exc})"
        raise InvalidInputError(path, problem) from exc
    if data.ndim == 3 and n > 1:
        array, extra = data, {"frame": int(frame or 0) % n, "n_frames": n}
    else:
        array, extra = _pick_frame(path, data, frame)
    meta = {
        "format": "nifti",
        "dtype": str(img.get_data_dtype()),
        "shape": shape,
        "modality": bids_modality(path),
    }
    return Volume(array, np.asarray(img.affine, dtype=np.float64), path, {**meta, **extra})


def _read_nrrd(path: Path, frame: int | None) -> Volume:
    try:
        with path.open("rb") as f:
            sizes = nrrd.read_header(f).get("sizes")
        if sizes is not None:
            check_voxels(path, tuple(np.asarray(sizes).tolist()), False)
        data, header = nrrd.read(str(path))
    except (nrrd.NRRDError, OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as exc:
        problem = f"file is truncated or not a valid NRRD ({type(exc).__name__}: {exc})"
        raise InvalidInputError(path, problem) from exc
    shape = tuple(int(s) for s in data.shape)
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings", [1.0] * data.ndim)
        directions = np.diag([float(s) for s in spacings])
    directions = np.asarray(directions, dtype=np.float64)
    spatial = [i for i, row in enumerate(directions) if np.all(np.isfinite(row))]
    if len(spatial) != 3:
        raise InvalidInputError(path, f"NRRD with {len(spatial)} spatial axes: expected 3")
    others = [i for i in range(data.ndim) if i not in spatial]
    data = np.transpose(data, spatial + others)  # non-spatial (frame) axes last
    lin = directions[spatial][:, :3].T  # columns = world step per voxel along each array axis
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = lin, origin
    space = str(header.get("space", "")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = _LPS_TO_RAS @ affine
    elif space in ("left-anterior-superior", "las"):
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    elif space not in ("right-anterior-superior", "ras"):
        logger.debug("%s: NRRD space %r taken as RAS", path, space)
    array, extra = _pick_frame(path, data, frame)
    meta = {
        "format": "nrrd",
        "dtype": str(data.dtype),
        "shape": shape,
        "modality": bids_modality(path),
    }
    return Volume(np.ascontiguousarray(array), affine, path, {**meta, **extra})


def _check_dicom_size(path: Path, first: Path, n_files: int) -> None:
    """Rows x Columns x frames of ``first``'s header, times ``n_files``, checked before decoding."""
    try:
        header = pydicom.dcmread(first, stop_before_pixels=True)
    except _DICOM_ERRORS as exc:
        problem = f"cannot read the DICOM header ({type(exc).__name__}: {exc})"
        raise InvalidInputError(path, problem) from exc
    rows, cols = getattr(header, "Rows", None), getattr(header, "Columns", None)
    if rows is None or cols is None:
        return  # no image attributes: the reader reports what is missing
    frames = getattr(header, "NumberOfFrames", None) or 1
    samples = getattr(header, "SamplesPerPixel", None) or 1
    shape = check_dimensions(
        path, (cols, rows, frames, samples), "Columns, Rows, NumberOfFrames, SamplesPerPixel"
    )
    check_count(
        path,
        [*shape[:2], shape[2] * shape[3] * n_files],
        limit=max_voxels(),
        unit="voxels",
        variable="MEDCL_MAX_VOXELS",
    )


def _read_dicom(path: Path, frame: int | None, series_uid: str | None) -> Volume:
    from monai.data import PydicomReader  # heavy import, only when DICOM is read

    if path.is_dir():
        series = select_series(path, series_uid)
        names = "|".join(re.escape(str(path / f.name)) for f in series.files)
        reader = PydicomReader(fname_regex=f"^(?:{names})$")
        uid, modality, count = series.uid, series.modality, len(series.files)
        _check_dicom_size(path, series.files[0], count)
    else:
        reader = PydicomReader()
        uid, modality, count = "", None, 1
        _check_dicom_size(path, path, 1)
    try:
        img = reader.read(str(path))
        data, monai_meta = reader.get_data(img)
        header = img[0] if isinstance(img, list) else img
    except _DICOM_ERRORS as exc:
        problem = f"cannot read DICOM image data ({type(exc).__name__}: {exc})"
        raise InvalidInputError(path, problem) from exc
    if not path.is_dir():
        uid = str(getattr(header, "SeriesInstanceUID", "") or "") or NO_UID
        modality = str(getattr(header, "Modality", "") or "") or None
    array, extra = _pick_frame(path, np.asarray(data), frame)
    affine = np.asarray(monai_meta["affine"], dtype=np.float64)
    meta = {
        "format": "dicom",
        "dtype": str(np.asarray(data).dtype),
        "shape": tuple(data.shape),
        "modality": modality,
        "series_uid": uid,
        "n_files": count,
    }
    return Volume(array.astype(np.float32), affine, path, {**meta, **extra})


def read_volume(
    path: str | Path, *, frame: int | None = None, series_uid: str | None = None
) -> Volume:
    """Read a NIfTI, NRRD or DICOM volume.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, a ``.dcm`` file, or a DICOM series folder.
        frame: which frame of a 4D volume to read (required for 4D, error for out of range).
        series_uid: which series of a DICOM folder holding several.

    Returns:
        The :class:`Volume`, array (X, Y, Z), affine voxel -> RAS+ mm.

    Raises:
        InvalidInputError: missing, empty, truncated, unsupported or ambiguous input.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(p, "file not found")
    if p.is_dir():
        return _read_dicom(p, frame, series_uid)
    if p.stat().st_size == 0:
        raise InvalidInputError(p, "file is empty (0 bytes)")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(p, frame)
    if name.endswith(NRRD_SUFFIXES):
        return _read_nrrd(p, frame)
    if name.endswith(DICOM_SUFFIXES) or pydicom.misc.is_dicom(p):
        return _read_dicom(p, frame, series_uid)
    raise InvalidInputError(
        p, f"unsupported file type '{''.join(p.suffixes)}': expected {SUPPORTED}"
    )


def _corner_distance_mm(shape: tuple[int, ...], a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance (mm) between the world positions of the grid's 8 corner voxels."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape[:3]], [1])).reshape(4, -1)
    return float(np.linalg.norm(((a - b) @ corners)[:3], axis=0).max())


def _grid_text(affine: np.ndarray) -> str:
    sp = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return (
        f"{''.join(nib.aff2axcodes(affine))}, spacing {tuple(np.round(sp, 3).tolist())}, "
        f"origin {tuple(np.round(affine[:3, 3], 2).tolist())}"
    )


def align_label(label: Volume, reference: Volume, *, tolerance_mm: float = 1e-3) -> Volume:
    """Return ``label`` on ``reference``'s voxel grid, reoriented if stored with other axcodes.

    Raises:
        AlignmentError: the grids differ (shape, or voxel positions by more than
            ``tolerance_mm``); the message names both files.
    """
    array, affine, note = label.array, label.affine, ""
    ornt_label, ornt_ref = io_orientation(label.affine), io_orientation(reference.affine)
    if not np.array_equal(ornt_label, ornt_ref):
        transform = ornt_transform(ornt_label, ornt_ref)
        array = apply_orientation(label.array, transform)
        affine = label.affine @ inv_ornt_aff(transform, label.array.shape)
        note = f" (after reorienting the label from {label.orientation} to {reference.orientation})"
        logger.debug(
            "%s: label reoriented %s -> %s", label.path, label.orientation, reference.orientation
        )
    if array.shape != reference.array.shape:
        problem = (
            f"label shape {tuple(array.shape)}{note} differs from image shape "
            f"{reference.shape} of {reference.path}"
        )
        raise AlignmentError(label.path, problem)
    distance = _corner_distance_mm(reference.shape, affine, reference.affine)
    if distance > tolerance_mm:
        problem = (
            f"label grid{note} ({_grid_text(affine)}) differs from the grid of "
            f"{reference.path} ({_grid_text(reference.affine)}) by up to "
            f"{distance:.3g} mm"
        )
        raise AlignmentError(label.path, problem)
    meta = {**label.meta, "reoriented": bool(note)}
    return Volume(np.ascontiguousarray(array), reference.affine.copy(), label.path, meta)


def as_label_array(path: str | Path, array: np.ndarray) -> np.ndarray:
    """``array`` as integer class indices; floats must hold integral values.

    Raises:
        InvalidInputError: non-integral or non-finite values.
    """
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    finite = np.isfinite(array)
    bad = ~finite | (np.where(finite, array, 0) != np.rint(np.where(finite, array, 0)))
    if bad.any():
        example = array[bad].flat[0]
        raise InvalidInputError(
            path, f"label map has non-integral values (e.g. {example:g}): expected class indices"
        )
    lo, hi = int(array.min(initial=0)), int(array.max(initial=0))
    dtype = np.result_type(np.min_scalar_type(lo), np.min_scalar_type(hi))
    return array.astype(dtype)


def read_label(
    path: str | Path, reference: Volume, *, tolerance_mm: float = 1e-3, **kw: Any
) -> Volume:
    """Read a label map and put it on ``reference``'s voxel grid (see :func:`align_label`).

    Args:
        path: label file (any format :func:`read_volume` reads).
        reference: the image the label belongs to.
        tolerance_mm: largest allowed difference of voxel positions.
        **kw: passed to :func:`read_volume` (``frame``, ``series_uid``).

    Returns:
        Integer label :class:`Volume` with ``reference``'s shape and affine.
    """
    label = read_volume(path, **kw)
    label.array = as_label_array(label.path, label.array)
    return align_label(label, reference, tolerance_mm=tolerance_mm)


def read_image_and_label(
    image_path: str | Path, label_path: str | Path, **kw: Any
) -> tuple[Volume, Volume]:
    """Read an image and its label map on one voxel grid; ``kw`` goes to :func:`read_volume`."""
    image = read_volume(image_path, **kw)
    return image, read_label(label_path, image)


def save_volume(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` as NIfTI (``.nii`` or ``.nii.gz``) with its affine; returns the path."""
    p = Path(path)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise InvalidInputError(
            p, "volumes are saved as NIfTI: the name must end in .nii or .nii.gz"
        )
    array = vol.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    p.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, vol.affine)
    img.set_qform(vol.affine, code=1)
    img.set_sform(vol.affine, code=1)
    nib.save(img, p)
    return p
