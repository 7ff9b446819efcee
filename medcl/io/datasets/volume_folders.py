"""Find (image, label) pairs in folders of volumes laid out as BIDS, MSD or a flat folder.

Layouts:

- **BIDS**: ``sub-*/[ses-*/]<datatype>/sub-*_<suffix>.nii.gz`` with labels in
  ``derivatives/labels/sub-*/[ses-*/]<datatype>/sub-*_<suffix>_<label_suffix>.nii.gz``.
- **MSD** (Medical Segmentation Decathlon, nnU-Net): ``imagesTr/<case>[_0000].nii.gz`` with
  ``labelsTr/<case>.nii.gz``; the modality comes from ``dataset.json`` when it names one.
- **ACDC**: ``patientNNN/patientNNN_frameMM.nii.gz`` with ``..._gt.nii.gz``
  (:mod:`medcl.io.datasets.acdc`); the subject is the patient.
- **flat**: ``X_image.nrrd`` with ``X_label.nrrd``, or ``X.nii.gz`` with ``X_seg.nii.gz``
  (also ``X_label``, ``X-label``, ``X_mask``), any supported extension.

Only paths are returned; read them with :func:`medcl.io.volumes.read_image_and_label`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medcl.errors import InvalidInputError
from medcl.io.volumes import NIFTI_SUFFIXES, NRRD_SUFFIXES, bids_modality

logger = logging.getLogger(__name__)

Layout = Literal["auto", "bids", "msd", "flat", "acdc"]
_VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *NRRD_SUFFIXES)
_LABEL_TAILS = ("_seg", "_label", "-label", "_mask")
_BIDS_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*_([A-Za-z0-9]+)$")


@dataclass(frozen=True)
class VolumeItem:
    """One image of a dataset folder and its label map (None when it has none)."""

    image: Path
    label: Path | None
    subject: str
    modality: str | None


def _split_name(path: Path) -> tuple[str, str]:
    """``("brain1_image", ".nrrd")`` for ``brain1_image.nrrd``; ``("", "")`` if not a volume."""
    if path.name.startswith("."):  # macOS resource forks (``._x.nii.gz``) in MSD archives
        return "", ""
    lower = path.name.lower()
    for suffix in _VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)], path.name[-len(suffix) :]
    return "", ""


def _existing(folder: Path, stem: str) -> Path | None:
    for suffix in _VOLUME_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_bids_pairs(root: str | Path, *, label_suffix: str = "seg-manual") -> list[VolumeItem]:
    """Images of a BIDS folder with their ``derivatives/labels`` label maps."""
    base = Path(root)
    items = []
    for subject_dir in sorted(base.glob("sub-*")):
        if not subject_dir.is_dir():
            continue
        for path in sorted(subject_dir.rglob("*")):
            stem, _ = _split_name(path)
            match = _BIDS_NAME.match(stem) if stem else None
            if match is None or not path.is_file():
                continue
            label_dir = base / "derivatives" / "labels" / path.parent.relative_to(base)
            label = _existing(label_dir, f"{stem}_{label_suffix}")
            items.append(VolumeItem(path, label, match.group(1), match.group(2)))
    return items


def _msd_modality(base: Path) -> str | None:
    info = base / "dataset.json"
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(info, f"not valid JSON ({exc})") from exc
    channels = data.get("modality") or data.get("channel_names") or {}
    if isinstance(channels, dict) and len(channels) == 1:
        return str(next(iter(channels.values())))
    return None


def find_msd_pairs(root: str | Path) -> list[VolumeItem]:
    """Images in ``imagesTr/``, labels of the same name (``_0000`` dropped) in ``labelsTr/``."""
    base = Path(root)
    modality = _msd_modality(base)
    items = []
    for path in sorted((base / "imagesTr").iterdir()):
        stem, _ = _split_name(path)
        if not stem:
            continue
        case = re.sub(r"_\d{4}$", "", stem)
        label = _existing(base / "labelsTr", case)
        items.append(VolumeItem(path, label, case, modality))
    return items


def find_flat_pairs(root: str | Path) -> list[VolumeItem]:
    """``X_image``/``X_label`` and ``X``/``X_seg`` pairs side by side in one folder."""
    base = Path(root)
    names = {path: _split_name(path)[0] for path in sorted(base.iterdir()) if path.is_file()}
    items = []
    for path, stem in names.items():
        if not stem or stem.endswith(_LABEL_TAILS):
            continue
        subject = stem[: -len("_image")] if stem.endswith("_image") else stem
        label = None
        for tail in _LABEL_TAILS:
            label = _existing(base, subject + tail) or _existing(base, stem + tail)
            if label is not None:
                break
        items.append(VolumeItem(path, label, subject, bids_modality(path)))
    return items


def find_acdc_pairs(root: str | Path) -> list[VolumeItem]:
    """Every frame of an ACDC folder with its ``_gt`` label (``None`` when missing)."""
    from medcl.io.datasets.acdc import find_acdc

    return [VolumeItem(f.image, f.label, f.patient, "mr") for f in find_acdc(root)]


def detect_layout(root: str | Path) -> Literal["bids", "msd", "flat", "acdc"]:
    """``"msd"`` if ``imagesTr/`` exists, ``"acdc"`` if ``patientNNN/`` frame folders do,
    ``"bids"`` if ``sub-*`` folders do, else ``"flat"``."""
    from medcl.io.datasets.acdc import is_acdc_folder

    base = Path(root)
    if (base / "imagesTr").is_dir():
        return "msd"
    if is_acdc_folder(base):
        return "acdc"
    if any(p.is_dir() for p in base.glob("sub-*")):
        return "bids"
    return "flat"


def find_volume_pairs(
    root: str | Path, *, layout: Layout = "auto", label_suffix: str = "seg-manual"
) -> list[VolumeItem]:
    """List the images of a dataset folder with their label maps.

    Args:
        root: the dataset folder.
        layout: ``"bids"``, ``"msd"``, ``"acdc"``, ``"flat"``, or ``"auto"``
            (see :func:`detect_layout`).
        label_suffix: BIDS label name after the image suffix (``seg-manual``, ``lesion-manual``).

    Returns:
        :class:`VolumeItem` s sorted by image path.

    Raises:
        InvalidInputError: ``root`` is not a folder or holds no image in that layout.
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInputError(base, "dataset folder not found")
    chosen = detect_layout(base) if layout == "auto" else layout
    if chosen == "bids":
        items = find_bids_pairs(base, label_suffix=label_suffix)
    elif chosen == "acdc":
        items = find_acdc_pairs(base)
    elif chosen == "msd":
        if not (base / "imagesTr").is_dir():
            raise InvalidInputError(base, "MSD layout expects an imagesTr/ folder")
        items = find_msd_pairs(base)
    else:
        items = find_flat_pairs(base)
    if not items:
        raise InvalidInputError(base, f"no NIfTI or NRRD images found in {chosen} layout")
    logger.debug("%s: %d images (%s layout)", base, len(items), chosen)
    return sorted(items, key=lambda item: str(item.image))
