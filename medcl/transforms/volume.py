"""Volume preprocessing: canonical orientation, resampling, intensity normalisation.

Reorientation is :func:`medcl.transforms.orientation.reorient_array` (the one reorientation every
viewer and job uses); resampling runs MONAI's ``Spacingd`` on ``MetaTensor`` s, image and label in
one call (label with nearest-neighbour interpolation). Both return new
:class:`~medcl.io.volumes.Volume` s with updated affines. The intensity steps are pure functions on
arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator

from medcl.config import StrictModel
from medcl.io.volumes import Volume
from medcl.transforms.orientation import reorient_array

logger = logging.getLogger(__name__)

_AXIS_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


class VolumePreprocessConfig(StrictModel):
    """How :func:`preprocess` prepares a volume.

    Attributes:
        orientation: target axis codes (``"RAS"``: array axes run to Right, Anterior, Superior).
        spacing: target voxel size in mm along the array axes; None keeps the spacing.
        intensity: ``"ct"`` (window to [0, 1]), ``"mr"`` (percentiles to [0, 1]) or ``"none"``.
        ct_window: (lo, hi) Hounsfield units mapped to 0 and 1, values outside clipped.
        mr_percentiles: (lower, upper) percentiles mapped to 0 and 1, values outside clipped.
        mr_nonzero_only: compute the MR percentiles on voxels > 0 only (the head, not the air).
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = None
    intensity: Literal["ct", "mr", "none"] = "none"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    mr_nonzero_only: bool = False

    @field_validator("orientation")
    @classmethod
    def _check_orientation(cls, value: str) -> str:
        code = value.upper()
        if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in _AXIS_PAIRS):
            raise ValueError("must be three axis codes, one of L/R, A/P, S/I each, e.g. 'RAS'")
        return code

    @field_validator("spacing")
    @classmethod
    def _check_spacing(
        cls, value: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("spacing must be positive (mm)")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> VolumePreprocessConfig:
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError("ct_window must be (lo, hi) with lo < hi")
        lo, hi = self.mr_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("mr_percentiles must be (lower, upper) with 0 <= lower < upper <= 100")
        return self


def _to_meta_tensor(vol: Volume) -> Any:
    from monai.data import MetaTensor

    data = torch.as_tensor(np.ascontiguousarray(vol.array, dtype=np.float32))[None]
    return MetaTensor(data, affine=torch.as_tensor(vol.affine, dtype=torch.float64))


def _from_meta_tensor(tensor: Any, like: Volume, *, is_label: bool) -> Volume:
    array = tensor[0].detach().cpu().numpy()
    if is_label:
        array = np.rint(array).astype(like.array.dtype)
    affine = np.asarray(tensor.affine.detach().cpu().numpy(), dtype=np.float64)
    return Volume(np.ascontiguousarray(array), affine, like.path, dict(like.meta))


def _apply_spatial(
    image: Volume, label: Volume | None, build: Callable[[list[str]], Any]
) -> tuple[Volume, Volume | None]:
    keys = ["image"] if label is None else ["image", "label"]
    data = {"image": _to_meta_tensor(image)}
    if label is not None:
        data["label"] = _to_meta_tensor(label)
    out = build(keys)(data)
    new_image = _from_meta_tensor(out["image"], image, is_label=False)
    new_label = None if label is None else _from_meta_tensor(out["label"], label, is_label=True)
    return new_image, new_label


def reorient(
    image: Volume, label: Volume | None = None, *, axcodes: str = "RAS"
) -> tuple[Volume, Volume | None]:
    """Permute/flip the arrays so their axes run along ``axcodes``; world positions unchanged.

    As the MONAI ``Orientationd`` this replaced: the image comes back as float32, the label
    keeps its dtype.

    Returns:
        (image, label) with arrays (X', Y', Z') in the new axis order and updated affines.
    """
    array, affine = reorient_array(np.asarray(image.array, dtype=np.float32), image.affine, axcodes)
    new_image = Volume(np.ascontiguousarray(array), affine, image.path, dict(image.meta))
    if label is None:
        return new_image, None
    lab, lab_affine = reorient_array(
        np.asarray(label.array, dtype=np.float32), label.affine, axcodes
    )
    values = np.rint(lab).astype(label.array.dtype)
    return new_image, Volume(np.ascontiguousarray(values), lab_affine, label.path, dict(label.meta))


def resample(
    image: Volume, label: Volume | None = None, *, spacing: tuple[float, float, float]
) -> tuple[Volume, Volume | None]:
    """Resample to voxel size ``spacing`` (mm); image trilinear, label nearest neighbour.

    The first voxel keeps its world position and the grid spans the same voxel centres (MONAI's
    convention), so 10 voxels of 2 mm become 19 voxels of 1 mm.
    """
    from monai.transforms import Spacingd

    def build(keys: list[str]) -> Any:
        modes = ["bilinear", "nearest"][: len(keys)]
        return Spacingd(keys=keys, pixdim=spacing, mode=modes)

    return _apply_spatial(image, label, build)


def window_ct(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map Hounsfield units ``window = (lo, hi)`` linearly to [0, 1], clipping outside values.

    Args:
        array: (X, Y, Z) CT values in HU.
        window: (lo, hi) with lo < hi.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    from monai.transforms import ScaleIntensityRange

    lo, hi = window
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(np.asarray(array, dtype=np.float32)), dtype=np.float32)


def scale_percentiles(
    array: np.ndarray,
    percentiles: tuple[float, float] = (1.0, 99.0),
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Map the ``percentiles`` of ``array`` (inside ``mask`` if given) to [0, 1], clipping.

    Args:
        array: (X, Y, Z) intensities (e.g. MR).
        percentiles: (lower, upper) in [0, 100].
        mask: optional (X, Y, Z) boolean foreground; percentiles are computed on it only.

    Returns:
        float32 array of the same shape in [0, 1] (all zeros if the range is empty).
    """
    from monai.transforms import ScaleIntensityRange

    values = np.asarray(array, dtype=np.float32)
    sample = values[mask.astype(bool)] if mask is not None else values
    if sample.size == 0:
        return np.zeros_like(values)
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        return np.zeros_like(values)
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(values), dtype=np.float32)


def preprocess(
    image: Volume, label: Volume | None = None, cfg: VolumePreprocessConfig | None = None
) -> tuple[Volume, Volume | None]:
    """Reorient, resample and normalise ``image`` (and ``label``, spatially only) per ``cfg``."""
    cfg = cfg or VolumePreprocessConfig()
    image, label = reorient(image, label, axcodes=cfg.orientation)
    if cfg.spacing is not None:
        image, label = resample(image, label, spacing=cfg.spacing)
    if cfg.intensity == "ct":
        image.array = window_ct(image.array, cfg.ct_window)
    elif cfg.intensity == "mr":
        mask = image.array > 0 if cfg.mr_nonzero_only else None
        image.array = scale_percentiles(image.array, cfg.mr_percentiles, mask)
    logger.debug("preprocessed %s: shape %s, spacing %s", image.path, image.shape, image.spacing)
    return image, label
