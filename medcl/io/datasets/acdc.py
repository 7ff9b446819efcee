"""ACDC (Automated Cardiac Diagnosis Challenge) cine-MR in the public download's own layout.

Bernard et al., IEEE TMI 2018. The training download holds ``patientNNN/`` folders with an
end-diastole and an end-systole frame, each with its manual label::

    patient001/patient001_frame01.nii.gz      patient001/patient001_frame01_gt.nii.gz
    patient001/patient001_frame12.nii.gz      patient001/patient001_frame12_gt.nii.gz

(plus ``patient001_4d.nii.gz`` and ``Info.cfg``, which are ignored). Labels: 0 background,
1 right ventricle, 2 myocardium, 3 left ventricle (:data:`ACDC_CLASSES`).

Evaluation splits are by **patient**: both frames of a patient are always in the same split, and
test patients are never seen in pretraining. :func:`load_patient_split` reads a split file
(``configs/splits/acdc.yaml``: ``test``, ``val``, ``train`` lists of patient ids) and checks it
against what is on disk; :func:`make_patient_split` makes one, stratified by the ACDC diagnostic
group (the download orders patients in blocks of 20 per group).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from medcl.errors import InvalidInputError

log = logging.getLogger(__name__)

ACDC_CLASSES: dict[str, int] = {"rv": 1, "myocardium": 2, "lv": 3}
"""Class name -> label value in the ``_gt`` files."""

ACDC_GROUPS: tuple[str, ...] = ("DCM", "HCM", "MINF", "NOR", "RV")
"""Diagnostic groups of the training download, in the order of its patient blocks of 20."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

_PATIENT = re.compile(r"^patient(\d{3})$")
_FRAME = re.compile(r"^(patient\d{3})_frame(\d{2})(_gt)?\.nii(\.gz)?$")


@dataclass(frozen=True)
class AcdcFrame:
    """One frame (3D volume) of a patient, with its manual label when the folder has it."""

    patient: str
    frame: int
    image: Path
    label: Path | None

    @property
    def id(self) -> str:
        return f"{self.patient}_frame{self.frame:02d}"


def is_acdc_folder(root: str | Path) -> bool:
    """True when ``root`` holds at least one ``patientNNN/patientNNN_frameMM.nii[.gz]``."""
    base = Path(root)
    if not base.is_dir():
        return False
    for sub in base.iterdir():
        if (
            sub.is_dir()
            and _PATIENT.match(sub.name)
            and any(_FRAME.match(p.name) for p in sub.iterdir())
        ):
            return True
    return False


def find_acdc(root: str | Path) -> list[AcdcFrame]:
    """Every frame of every ``patientNNN/`` folder, sorted by patient and frame.

    A frame without its ``_gt`` file is returned with ``label=None`` (usable unlabelled for
    pretraining; skipped with a log line where labels are needed).

    Raises:
        InvalidInputError: ``root`` is not a folder or holds no ACDC frame.
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInputError(base, "ACDC folder not found")
    frames: list[AcdcFrame] = []
    for sub in sorted(base.iterdir()):
        if not (sub.is_dir() and _PATIENT.match(sub.name)):
            continue
        images: dict[int, Path] = {}
        labels: dict[int, Path] = {}
        for path in sorted(sub.iterdir()):
            match = _FRAME.match(path.name)
            if match is None or match.group(1) != sub.name:
                continue
            (labels if match.group(3) else images)[int(match.group(2))] = path
        for frame, image in sorted(images.items()):
            label = labels.get(frame)
            if label is None:
                log.info("%s: no _gt label; usable for pretraining only", image)
            frames.append(AcdcFrame(sub.name, frame, image, label))
        for frame in sorted(set(labels) - set(images)):
            log.warning("%s: label without its image; skipped", labels[frame])
    if not frames:
        raise InvalidInputError(
            base, "no ACDC frames found (expected patientNNN/patientNNN_frameMM.nii.gz)"
        )
    return frames


def patients(frames: Iterable[AcdcFrame]) -> list[str]:
    """The distinct patient ids, sorted."""
    return sorted({f.patient for f in frames})


def acdc_group(patient: str) -> str:
    """The diagnostic group of a training-download patient (blocks of 20 ids per group)."""
    match = _PATIENT.match(patient)
    if match is None:
        raise ValueError(f"not an ACDC patient id: {patient!r}")
    number = int(match.group(1))
    return ACDC_GROUPS[min((number - 1) // 20, len(ACDC_GROUPS) - 1)]


def make_patient_split(
    patient_ids: Sequence[str], *, test_per_group: int = 4, val_per_group: int = 1, seed: int = 0
) -> dict[str, list[str]]:
    """A patient split stratified by diagnostic group: ``{"train", "val", "test"}`` id lists."""
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {name: [] for name in SPLITS}
    by_group: dict[str, list[str]] = {}
    for pid in sorted(patient_ids):
        by_group.setdefault(acdc_group(pid), []).append(pid)
    for group in ACDC_GROUPS:
        ids = list(by_group.get(group, []))
        rng.shuffle(ids)
        split["test"] += ids[:test_per_group]
        split["val"] += ids[test_per_group : test_per_group + val_per_group]
        split["train"] += ids[test_per_group + val_per_group :]
    return {name: sorted(ids) for name, ids in split.items()}


def load_patient_split(
    path: str | Path, available: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Read a split file (YAML or JSON mapping ``train``/``val``/``test`` to patient ids).

    Args:
        path: the split file.
        available: patient ids present on disk; every id the file names must be among them.

    Raises:
        InvalidInputError: unreadable file, missing split, a patient in two splits, or a patient
            that is not in ``available`` (the first few named).
    """
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(file, f"cannot read split file ({exc})") from exc
    if not isinstance(data, Mapping):
        raise InvalidInputError(file, "split file must map train/val/test to lists of patients")
    missing = [name for name in SPLITS if name not in data]
    if missing:
        raise InvalidInputError(file, f"split file has no {', '.join(missing)} list")
    split: dict[str, list[str]] = {}
    for name in SPLITS:
        ids = data[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidInputError(file, f"'{name}' must be a list of patient ids")
        split[name] = list(ids)
    seen: dict[str, str] = {}
    for name, ids in split.items():
        for pid in ids:
            if pid in seen:
                raise InvalidInputError(file, f"{pid} is in both '{seen[pid]}' and '{name}'")
            seen[pid] = name
    if available is not None:
        present = set(available)
        absent = [pid for pid in seen if pid not in present]
        if absent:
            shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
            raise InvalidInputError(
                file, f"{len(absent)} patient(s) named in the split are not in the data: {shown}"
            )
    return split


def write_patient_split(split: Mapping[str, Sequence[str]], path: str | Path) -> None:
    """Write ``split`` as YAML (one list per split)."""
    text = yaml.safe_dump({name: list(split[name]) for name in SPLITS}, sort_keys=False)
    Path(path).write_text(text, encoding="utf-8")
