"""A synthetic ACDC-like folder for tests: cardiac short-axis stacks in the public file naming.

Each patient gets two frames (``_frame01`` end-diastole, ``_frame02`` end-systole, smaller
cavities) of ``(size, size, depth)`` voxels: a bright left-ventricle blood pool (label 3) inside
a dark myocardial ring (2), a bright right-ventricle crescent beside it (1), all shrinking from
base to apex, on a noisy background, with a per-patient offset. Intensities lie in [0, 1]
like the copies in the shared data.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def _frame(
    size: int, depth: int, rng: np.random.Generator, shift: tuple[float, float], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size, depth), np.float32)
    label = np.zeros((size, size, depth), np.uint8)
    cy, cx = size / 2 + shift[0], size / 2 + shift[1]
    for z in range(depth):
        taper = 1.0 - 0.6 * z / max(depth - 1, 1)  # base -> apex
        r_lv = size * 0.11 * scale * taper
        r_myo = r_lv + size * 0.05
        d_lv = np.hypot(yy - cy, xx - cx)
        rv_c = (cy - size * 0.02, cx - r_myo - size * 0.06 * taper)
        d_rv = np.hypot((yy - rv_c[0]) / 1.3, xx - rv_c[1])
        lab = np.zeros((size, size), np.uint8)
        lab[d_rv < size * 0.09 * scale * taper] = 1
        lab[d_lv < r_myo] = 2
        lab[d_lv < r_lv] = 3
        img = 0.25 + 0.08 * rng.standard_normal((size, size))
        img[lab == 1] = 0.75
        img[lab == 2] = 0.35
        img[lab == 3] = 0.85
        image[:, :, z] = np.clip(img + 0.03 * rng.standard_normal((size, size)), 0, 1)
        label[:, :, z] = lab
    return image, label


def write_synthetic_acdc(
    folder: Path,
    patient_ids: list[int],
    *,
    size: int = 48,
    depth: int = 8,
    seed: int = 0,
    affine: np.ndarray | None = None,
) -> list[str]:
    """Write ``patientNNN/patientNNN_frame0{1,2}[_gt].nii.gz`` for each id; returns the ids."""
    rng = np.random.default_rng(seed)
    aff = np.eye(4) if affine is None else affine
    names = []
    for pid in patient_ids:
        name = f"patient{pid:03d}"
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        shift = (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)))
        for frame, scale in ((1, 1.0), (2, 0.75)):
            image, label = _frame(size, depth, rng, shift, scale * float(rng.uniform(0.9, 1.1)))
            nib.save(nib.Nifti1Image(image, aff), sub / f"{name}_frame{frame:02d}.nii.gz")
            nib.save(nib.Nifti1Image(label, aff), sub / f"{name}_frame{frame:02d}_gt.nii.gz")
        names.append(name)
    return names
