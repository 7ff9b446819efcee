"""Augmented views for contrastive pretraining (MONAI dictionary transforms).

Chaitanya et al., NeurIPS 2020 make two views of every image:

* **global views** (:func:`global_view_transform`): random crop, flip, affine (rotate/scale),
  elastic deformation, then intensity changes. Geometric steps act on ``image`` and, when present,
  ``label`` (nearest-neighbour), so a label map always matches its image.
* **local views** (:func:`local_view_transform`): intensity changes only. The local loss contrasts
  the feature vector at position ``(h, w)`` of view 1 with the one at the *same* ``(h, w)`` of
  view 2, which is only meaningful if the two views are spatially aligned; any geometric
  augmentation is applied once, before the copies are made (``TwoViews(..., shared=...)``).

Intensity defaults per modality (``MODALITY_DEFAULTS``), each step applied with probability
``prob`` (0.5):

* ``"ct"``: intensities already windowed to [0, 1] by preprocessing, so mild changes: gamma in
  (0.8, 1.25), brightness scale +-10 %, shift +-0.05, Gaussian noise std <= 0.01, no bias field.
* ``"mr"``: arbitrary units and coil shading, so stronger: gamma in (0.5, 2.0), scale +-20 %,
  shift +-0.1, noise std <= 0.02, and a smooth multiplicative bias field (degree 3, coefficients
  up to 0.1).

Reproducibility: every builder returns a ``monai.transforms.Compose``, and :class:`TwoViews` has
``set_random_state(seed)``; the same seed gives the same views. MONAI's random transforms draw
from a generator of their own, created unseeded at import, so a training must seed them (the
slice datasets' ``set_random_state``; :func:`medcl.engine.seed.worker_init_fn` reseeds them in
each DataLoader worker).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleCropd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Resized,
    SpatialPadd,
)

Modality = Literal["ct", "mr"]

MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "ct": {"gamma": (0.8, 1.25), "scale": 0.1, "shift": 0.05, "noise_std": 0.01, "bias": 0.0},
    "mr": {"gamma": (0.5, 2.0), "scale": 0.2, "shift": 0.1, "noise_std": 0.02, "bias": 0.1},
}


def _sizes(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (value,) * spatial_dims if isinstance(value, int) else tuple(value)
    if len(sizes) != spatial_dims or min(sizes) < 1:
        raise ValueError(f"crop_size must be {spatial_dims} positive sizes, got {value}")
    return sizes


def _check_prob(**probs: float) -> None:
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")


def geometric_transform(
    spatial_dims: int,
    crop_size: int | Sequence[int],
    *,
    keys: Sequence[str] = ("image", "label"),
    flip_prob: float = 0.5,
    affine_prob: float = 0.5,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    elastic_prob: float = 0.2,
    crop_scale: tuple[float, float] | None = None,
) -> Compose:
    """Pad to at least ``crop_size``, random crop, flip, affine, elastic.

    Without ``crop_scale`` the crop is a window of exactly ``crop_size`` (a no-op when the input
    already has that size). With ``crop_scale=(lo, hi)`` it is a crop-and-resize, as the views of
    Chaitanya et al. and SimCLR: each side of the window is a random fraction in ``[lo, hi]`` of the
    input's side, and the window is resized back to ``crop_size``, so the view really zooms in.

    The first key is interpolated bilinearly, the others (labels) by nearest neighbour; missing
    keys are skipped. Output spatial size is always ``crop_size``.

    Args:
        spatial_dims: 2 for slices ``(C, H, W)``, 3 for volumes ``(C, H, W, D)``.
        crop_size: crop size, one int for every axis or one per axis.
        keys: image key first, then keys moved with it (labels).
        flip_prob: probability of a flip, drawn independently for each axis.
        affine_prob: probability of the rotation/scaling.
        rotate_deg: rotations drawn uniformly in +-``rotate_deg`` (about every axis in 3D).
        scale: zoom drawn uniformly in ``1 +- scale``.
        elastic_prob: probability of the elastic deformation (2D: control points every quarter
            crop moved up to 3 px; 3D: smoothing sigma 5-8 voxels, magnitude 50-150).
        crop_scale: ``(lo, hi)`` side fractions of a crop-and-resize (``0 < lo <= hi <= 1``), or
            ``None`` for a fixed-size window.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    _check_prob(flip_prob=flip_prob, affine_prob=affine_prob, elastic_prob=elastic_prob)
    size = _sizes(crop_size, spatial_dims)
    keys = tuple(keys)
    modes = ("bilinear",) + ("nearest",) * (len(keys) - 1)
    rot = math.radians(rotate_deg)
    rotate_range = (rot,) if spatial_dims == 2 else (rot, rot, rot)
    steps: list[Callable[..., Any]] = [
        SpatialPadd(keys, spatial_size=size, allow_missing_keys=True)
    ]
    if crop_scale is None:
        steps.append(
            RandSpatialCropd(keys, roi_size=size, random_size=False, allow_missing_keys=True)
        )
    else:
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        steps += [
            RandScaleCropd(
                keys, roi_scale=lo, max_roi_scale=hi, random_size=True, allow_missing_keys=True
            ),
            Resized(
                keys,
                spatial_size=size,
                mode=modes,
                allow_missing_keys=True,
            ),
        ]
    steps += [
        RandFlipd(keys, prob=flip_prob, spatial_axis=axis, allow_missing_keys=True)
        for axis in range(spatial_dims)
    ]
    steps.append(
        RandAffined(
            keys,
            prob=affine_prob,
            rotate_range=rotate_range,
            scale_range=(scale,) * spatial_dims,
            mode=modes,
            padding_mode="zeros",
            allow_missing_keys=True,
        )
    )
    if spatial_dims == 2:
        steps.append(
            Rand2DElasticd(
                keys,
                spacing=(float(max(2, size[0] // 4)), float(max(2, size[1] // 4))),
                magnitude_range=(0.0, 3.0),
                prob=elastic_prob,
                mode=modes,
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    else:
        steps.append(
            Rand3DElasticd(
                keys,
                sigma_range=(5.0, 8.0),
                magnitude_range=(50.0, 150.0),
                prob=elastic_prob,
                mode=modes,
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    return Compose(steps)


def intensity_transform(
    modality: Modality, *, key: str = "image", prob: float = 0.5, **overrides: Any
) -> Compose:
    """Gamma, bias field (MR), brightness scale and shift, Gaussian noise, on ``key`` only.

    Args:
        modality: ``"ct"`` or ``"mr"``, choosing :data:`MODALITY_DEFAULTS`.
        key: the image key.
        prob: probability of each step.
        overrides: replace defaults: ``gamma`` (lo, hi), ``scale``, ``shift``, ``noise_std``,
            ``bias`` (max bias-field coefficient, 0 disables it).
    """
    if modality not in MODALITY_DEFAULTS:
        raise ValueError(f"modality must be one of {sorted(MODALITY_DEFAULTS)}, got {modality!r}")
    unknown = set(overrides) - set(MODALITY_DEFAULTS[modality])
    if unknown:
        valid = ", ".join(MODALITY_DEFAULTS[modality])
        raise ValueError(f"unknown intensity options {sorted(unknown)}; valid: {valid}")
    _check_prob(prob=prob)
    p = {**MODALITY_DEFAULTS[modality], **overrides}
    steps: list[Callable[..., Any]] = [RandAdjustContrastd(key, prob=prob, gamma=p["gamma"])]
    if p["bias"] > 0:
        steps.append(RandBiasFieldd(key, degree=3, coeff_range=(0.0, p["bias"]), prob=prob))
    steps += [
        RandScaleIntensityd(key, factors=p["scale"], prob=prob),
        RandShiftIntensityd(key, offsets=p["shift"], prob=prob),
        RandGaussianNoised(key, prob=prob, std=p["noise_std"]),
    ]
    return Compose(steps)


def global_view_transform(
    spatial_dims: int,
    modality: Modality,
    crop_size: int | Sequence[int],
    *,
    keys: Sequence[str] = ("image", "label"),
    intensity_prob: float = 0.5,
    **geometric: Any,
) -> Compose:
    """One global view: :func:`geometric_transform` then :func:`intensity_transform`.

    ``geometric`` passes ``flip_prob``, ``affine_prob``, ``rotate_deg``, ``scale``,
    ``elastic_prob`` on. Output spatial size: ``crop_size``.
    """
    keys = tuple(keys)
    return Compose(
        [
            geometric_transform(spatial_dims, crop_size, keys=keys, **geometric),
            intensity_transform(modality, key=keys[0], prob=intensity_prob),
        ]
    )


def local_view_transform(
    modality: Modality, *, key: str = "image", prob: float = 0.5, **intensity: Any
) -> Compose:
    """One local view: intensity changes only, so two views stay voxel-aligned (see module doc)."""
    return intensity_transform(modality, key=key, prob=prob, **intensity)


class TwoViews:
    """Make two independently augmented copies of one sample.

    Args:
        view: transform producing a view (applied to a deep copy of the sample).
        second: transform for the second view; default: an independent copy of ``view``.
        shared: transform applied once *before* copying (e.g. a geometric transform, so
            intensity-only views stay aligned for the local loss).
        seed: if given, :meth:`set_random_state` is called with it.

    Returns (``__call__``): ``(view1, view2)``, two dicts with the sample's keys.
    """

    def __init__(
        self,
        view: Callable[[Any], Any],
        second: Callable[[Any], Any] | None = None,
        *,
        shared: Callable[[Any], Any] | None = None,
        seed: int | None = None,
    ) -> None:
        self.shared = shared
        self.first = view
        self.second = second if second is not None else copy.deepcopy(view)
        if seed is not None:
            self.set_random_state(seed)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> TwoViews:
        """Seed the three transforms with distinct seeds derived from ``seed`` (or ``state``)."""
        if seed is None and state is None:
            return self
        rng = state if state is not None else np.random.RandomState(seed)
        for t in (self.shared, self.first, self.second):
            sub = int(rng.randint(0, 2**31 - 1))
            if isinstance(t, Randomizable):
                t.set_random_state(seed=sub)
        return self

    def __call__(self, data: Mapping[Any, Any]) -> tuple[dict[Any, Any], dict[Any, Any]]:
        sample = dict(data)
        if self.shared is not None:
            sample = dict(self.shared(sample))
        return dict(self.first(copy.deepcopy(sample))), dict(self.second(copy.deepcopy(sample)))
