"""DICOM series discovery: which files in a folder belong to which series.

Only headers are read here (``pydicom.dcmread(..., stop_before_pixels=True)``); pixel data is
decoded later by MONAI's ``PydicomReader`` in :mod:`medcl.io.volumes`. Files that are not DICOM
are skipped with a debug log, so a folder may also hold notes or thumbnails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medcl.errors import InvalidInputError

logger = logging.getLogger(__name__)

NO_UID = "<no SeriesInstanceUID>"
"""Key used for files whose SeriesInstanceUID is absent or empty (e.g. anonymised exports)."""


@dataclass
class DicomSeries:
    """The files of one DICOM series found in a folder.

    Attributes:
        uid: SeriesInstanceUID, or :data:`NO_UID` when the files carry none.
        files: paths of the series' files, sorted by name.
        modality: the Modality tag of the first file (``"CT"``, ``"MR"``, ...), or None.
        description: SeriesDescription of the first file, or ``""``.
    """

    uid: str
    files: list[Path] = field(default_factory=list)
    modality: str | None = None
    description: str = ""


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of ``path``, or None when it is not a DICOM file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        logger.debug("ignoring %s: not a readable DICOM file (%s)", path, exc)
        return None


def find_series(folder: str | Path) -> dict[str, DicomSeries]:
    """Group the DICOM files directly inside ``folder`` by SeriesInstanceUID.

    Args:
        folder: a folder of DICOM files (sub-folders are not searched).

    Returns:
        ``{uid: DicomSeries}`` in order of first appearance (files sorted by name).

    Raises:
        InvalidInputError: the folder does not exist, or holds no DICOM file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(root, "DICOM folder not found")
    series: dict[str, DicomSeries] = {}
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            continue
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            logger.debug("ignoring %s: DICOM file without an image", path)
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip() or NO_UID
        entry = series.get(uid)
        if entry is None:
            modality = str(getattr(ds, "Modality", "") or "").strip() or None
            description = str(getattr(ds, "SeriesDescription", "") or "")
            entry = series[uid] = DicomSeries(uid, [], modality, description)
        entry.files.append(path)
    if not series:
        raise InvalidInputError(root, "folder holds no DICOM image files")
    return series


def select_series(folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """The one series of ``folder`` to read: the only one, or the one named by ``series_uid``.

    Raises:
        InvalidInputError: no DICOM files; several series and no ``series_uid``; or
            ``series_uid`` not among them. The message lists the UIDs with their slice counts.
    """
    found = find_series(folder)
    listing = ", ".join(f"{uid} ({len(s.files)} files)" for uid, s in found.items())
    if series_uid is not None:
        if series_uid not in found:
            raise InvalidInputError(
                folder, f"no series with SeriesInstanceUID {series_uid}; found: {listing}"
            )
        return found[series_uid]
    if len(found) > 1:
        raise InvalidInputError(
            folder,
            f"folder holds {len(found)} DICOM series: {listing}; "
            "pass series_uid= (--series-uid) to pick one",
        )
    return next(iter(found.values()))
