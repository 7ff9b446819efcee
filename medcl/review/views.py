"""Rendering logic of the review pages: pure functions on arrays, file reads at the edges.

Pages in ``app/app_pages`` call these and only display the results, so everything shown to a
reviewer is tested here without a browser:

- volumes: a slice in the axial, coronal or sagittal plane (radiological convention: patient's
  right on the viewer's left, anterior / superior up) with the predicted mask blended in per
  class, an opacity and per-class toggles; Dice per class against a ground truth; window / level
  presets per modality (CT in Hounsfield units, MR by percentiles) and manual window / level;
  the displayed slice resampled to the voxel spacing's proportions; a legend of the shown classes;
- slides: see :mod:`medcl.review.slide_views`;
- retrieval: the demonstrations as table rows.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.metrics import dice_per_class
from medcl.review.errors import ReviewError
from medcl.review.predictions import TIE_PREFIX, is_tie_label
from medcl.transforms.orientation import ras_spacing, to_ras
from medcl.viz.volumes import PLANE_AXIS as PLANE_AXIS
from medcl.viz.volumes import PLANES as PLANES
from medcl.viz.volumes import Plane as Plane
from medcl.viz.volumes import plane_aspect as plane_aspect
from medcl.viz.volumes import plane_slice as plane_slice

#: Colour of class ``c`` is ``PALETTE[(c - 1) % len(PALETTE)]`` (class 0 is background).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
)


# ---------------------------------------------------------------------------- volumes
def class_colour(c: int) -> tuple[int, int, int]:
    """RGB colour of foreground class ``c >= 1``."""
    if c < 1:
        raise ValueError(f"class {c} is background and has no colour")
    return PALETTE[(c - 1) % len(PALETTE)]


def intensity_window(
    array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float]:
    """``(lo, hi)`` display window from percentiles of ``array`` (hi > lo always)."""
    lo, hi = (float(v) for v in np.percentile(array, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


@dataclass(frozen=True)
class WindowPreset:
    """A display window: fixed ``width`` / ``level`` (CT, Hounsfield units) or ``percentiles``
    of the volume's intensities (MR and anything uncalibrated)."""

    name: str
    width: float | None = None
    level: float | None = None
    percentiles: tuple[float, float] | None = None


CT_PRESETS = (
    WindowPreset("CT soft tissue (W400 / L40)", width=400.0, level=40.0),
    WindowPreset("CT lung (W1500 / L-600)", width=1500.0, level=-600.0),
    WindowPreset("CT bone (W1800 / L400)", width=1800.0, level=400.0),
)
PERCENTILE_PRESETS = (
    WindowPreset("percentiles 0.5-99.5", percentiles=(0.5, 99.5)),
    WindowPreset("percentiles 1-99", percentiles=(1.0, 99.0)),
)
MANUAL = "manual window / level"
MODALITIES = ("CT", "MR")


def window_from_level(width: float, level: float) -> tuple[float, float]:
    """``(lo, hi) = (level - width / 2, level + width / 2)``; ``width`` must be positive."""
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    return level - width / 2.0, level + width / 2.0


def level_of(window: tuple[float, float]) -> tuple[float, float]:
    """``(width, level)`` of a ``(lo, hi)`` window (the inverse of :func:`window_from_level`)."""
    lo, hi = window
    return hi - lo, (lo + hi) / 2.0


def modality_of(value: object) -> str | None:
    """``"CT"`` or ``"MR"`` from a record's ``artifacts.modality`` (``"MRI"``, ``"mr"`` ...);
    None when absent or another modality."""
    text = str(value or "").strip().upper()
    if text == "MRI":
        text = "MR"
    return text if text in MODALITIES else None


def window_presets(modality: str | None) -> list[WindowPreset]:
    """The presets offered for ``modality``, the default first: CT -> soft tissue, lung, bone,
    then percentiles; MR -> percentiles; unknown -> percentiles, then the CT windows."""
    if modality == "CT":
        return [*CT_PRESETS, *PERCENTILE_PRESETS]
    if modality == "MR":
        return list(PERCENTILE_PRESETS)
    return [*PERCENTILE_PRESETS, *CT_PRESETS]


def preset_window(preset: WindowPreset, array: np.ndarray) -> tuple[float, float]:
    """The ``(lo, hi)`` window of ``preset`` for the volume ``array``."""
    if preset.percentiles is not None:
        return intensity_window(array, preset.percentiles)
    if preset.width is None or preset.level is None:
        raise ValueError(f"preset {preset.name!r} has neither width / level nor percentiles")
    return window_from_level(preset.width, preset.level)


def to_gray_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``image`` (any shape) linearly from ``window`` to 0..255 uint8, clipped."""
    lo, hi = window
    scaled = (np.asarray(image, dtype=np.float64) - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def overlay_mask(
    gray: np.ndarray,
    mask: np.ndarray | None,
    *,
    opacity: float = 0.5,
    visible: Collection[int] | None = None,
) -> np.ndarray:
    """Blend the classes of ``mask`` over a grey image.

    Args:
        gray: ``(H, W)`` uint8 image.
        mask: ``(H, W)`` integer classes (0 background) or None.
        opacity: 0 leaves the image unchanged, 1 paints the class colour.
        visible: classes to draw; None draws every foreground class.

    Returns:
        ``(H, W, 3)`` uint8 RGB: ``round((1 - opacity) * gray + opacity * colour)`` on drawn
        voxels, ``gray`` elsewhere.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=2)
    if mask is None or opacity == 0.0:
        return rgb
    if mask.shape != gray.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {gray.shape}")
    out = rgb.astype(np.float64)
    for value in np.unique(mask):
        c = int(value)
        if c <= 0 or (visible is not None and c not in visible):
            continue
        sel = mask == c
        out[sel] = (1.0 - opacity) * out[sel] + opacity * np.asarray(class_colour(c), float)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_volume_slice(
    image: np.ndarray,
    mask: np.ndarray | None,
    plane: Plane,
    index: int,
    *,
    window: tuple[float, float],
    opacity: float = 0.5,
    visible: Collection[int] | None = None,
    aspect: float = 1.0,
) -> np.ndarray:
    """RGB uint8 slice of a RAS ``(X, Y, Z)`` volume with its mask blended in.

    The slice is resampled by ``aspect`` (see :func:`plane_aspect` and
    :func:`resample_aspect`) so that anisotropic voxels look right; ``aspect == 1`` keeps the
    voxel grid.
    """
    gray = to_gray_uint8(plane_slice(image, plane, index), window)
    labels = None if mask is None else plane_slice(mask, plane, index)
    return resample_aspect(overlay_mask(gray, labels, opacity=opacity, visible=visible), aspect)


def aspect_shape(shape: tuple[int, int], aspect: float) -> tuple[int, int]:
    """Displayed ``(rows, columns)`` of a ``shape`` slice whose row spacing is ``aspect`` times
    its column spacing: the finer axis keeps its pixels, the coarser one is stretched, so
    nothing is lost and a millimetre is as long across as down."""
    if not aspect > 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    rows, cols = shape
    if aspect >= 1.0:
        return max(1, round(rows * aspect)), cols
    return rows, max(1, round(cols / aspect))


def resample_aspect(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """``rgb`` resized (nearest neighbour: labels stay crisp) to :func:`aspect_shape`."""
    rows, cols = aspect_shape((rgb.shape[0], rgb.shape[1]), aspect)
    if (rows, cols) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((cols, rows), Image.Resampling.NEAREST))


def enlarge(rgb: np.ndarray, min_edge: int = 256) -> np.ndarray:
    """Repeat pixels by the smallest integer factor making the longer edge ``>= min_edge``.

    Small slices then stay crisp in the browser, which would otherwise smooth them.
    """
    factor = max(1, -(-min_edge // max(rgb.shape[:2])))
    return rgb if factor == 1 else np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def class_names(mask: np.ndarray, labels: Mapping[str, str] | None) -> dict[int, str]:
    """Foreground classes present in ``mask`` or named in ``labels``, with their names.

    Raises:
        ReviewError: a key of ``labels`` is not a class number.
    """
    names: dict[int, str] = {}
    for k, v in (labels or {}).items():
        try:
            c = int(k)
        except (TypeError, ValueError):
            raise ReviewError(
                f"artifacts.labels: key {str(k)[:40]!r} is not a class number"
            ) from None
        if c > 0:
            names[c] = str(v)
    for c in np.unique(mask):
        if int(c) > 0:
            names.setdefault(int(c), f"class {int(c)}")
    return dict(sorted(names.items()))


def legend_items(
    names: Mapping[int, str], visible: Collection[int]
) -> list[tuple[int, str, tuple[int, int, int]]]:
    """``(class, name, colour)`` of the classes in ``names`` that are toggled on, by class."""
    return [(c, names[c], class_colour(c)) for c in sorted(names) if c in visible]


def dice_rows(
    pred: np.ndarray, truth: np.ndarray, labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Dice of each foreground class (``medcl.metrics.dice_per_class``) as table rows.

    Returns:
        ``[{"class": c, "name": ..., "dice": float or None}]``; None for a class absent
        from both maps.
    """
    names = class_names(np.concatenate([pred.ravel(), truth.ravel()]), labels)
    if not names:
        return []
    dice = dice_per_class(pred, truth, max(names) + 1)
    return [
        {"class": c, "name": n, "dice": None if math.isnan(dice[c - 1]) else float(dice[c - 1])}
        for c, n in names.items()
    ]


@dataclass
class VolumeCase:
    """Image, predicted mask and optional ground truth of one case, all RAS ``(X, Y, Z)``."""

    image: np.ndarray
    mask: np.ndarray
    ground_truth: np.ndarray | None
    spacing: tuple[float, float, float]


def load_volume_case(image: Path, mask: Path, ground_truth: Path | None = None) -> VolumeCase:
    """Read a volume case (any format of :mod:`medcl.io.volumes`) and orient it RAS.

    Raises:
        InvalidInputError / AlignmentError: unreadable files, or a mask off the image's grid.
    """
    from medcl.io.volumes import read_label, read_volume

    vol = read_volume(image)
    pred = read_label(mask, vol)
    truth = read_label(ground_truth, vol) if ground_truth is not None else None

    def ras(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_ras(array, vol.affine))

    return VolumeCase(
        image=ras(vol.array),
        mask=ras(pred.array),
        ground_truth=None if truth is None else ras(truth.array),
        spacing=ras_spacing(vol.affine),
    )


# ---------------------------------------------------------------------------- images
def load_rgb(path: Path, max_size: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, shrunk to ``max_size`` on its longer side."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(path, f"cannot read image ({exc})") from exc
    if max_size is not None and max(rgb.size) > max_size:
        rgb.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return np.asarray(rgb)


# ---------------------------------------------------------------------------- retrieval
def demonstration_rows(
    demonstrations: Sequence[Mapping[str, Any]], true_label: str | None = None
) -> list[dict[str, Any]]:
    """Table rows for the retrieved demonstrations, most similar first.

    Returns:
        ``[{"rank", "label", "similarity", "domain", "file", "same_as_truth"}]``;
        ``same_as_truth`` is None without a true label.
    """
    ordered = sorted(demonstrations, key=lambda d: -float(d.get("similarity") or 0.0))
    return [
        {
            "rank": i + 1,
            "label": str(d.get("label", "")),
            "similarity": round(float(d.get("similarity") or 0.0), 3),
            "domain": str(d.get("domain") or ""),
            "file": Path(str(d.get("path", ""))).name,
            "same_as_truth": None if true_label is None else str(d.get("label")) == true_label,
        }
        for i, d in enumerate(ordered)
    ]


def vote_tie(label: str, artifacts: Mapping[str, Any]) -> list[str]:
    """The classes tied in a retrieval case's vote (empty when one class won).

    ``artifacts["tie"]`` when the pipeline lists them, else parsed from a ``"tie: a / b"`` label.
    """
    listed = artifacts.get("tie")
    if isinstance(listed, list) and len(listed) >= 2:
        return [str(x) for x in listed]
    if is_tie_label(label):
        return [p.strip() for p in label[len(TIE_PREFIX) :].split(" / ") if p.strip()]
    return []
