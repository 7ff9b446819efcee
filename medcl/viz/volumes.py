"""Look at a volume: a summary dict and a three-plane PNG preview with the label overlaid.

The preview first reorients image and label to RAS
(:func:`medcl.transforms.orientation.reorient_array`), then shows the axial, coronal and sagittal
slices in radiological convention (patient's right on the viewer's left, anterior up in the
axial view, superior up in the others), with pixel aspect taken from the voxel spacing. The
slicing (:func:`plane_slice`, :func:`plane_aspect`) is the review viewer's too, so the preview and
the viewer show a volume the same way up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medcl.io.volumes import Volume

logger = logging.getLogger(__name__)

_PERCENTILES = (1.0, 50.0, 99.0)

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
#: Array axis (of a RAS array) that each plane cuts through.
PLANE_AXIS: dict[Plane, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


def describe_volume(vol: Volume, label: Volume | None = None) -> dict[str, Any]:
    """A JSON-friendly summary of ``vol`` (and of ``label``'s classes).

    Returns:
        ``path, shape, spacing, orientation, affine`` (the 4 x 4 voxel -> RAS+ mm matrix as rows,
        rounded to 6 decimals), ``dtype, modality, min, max, mean, percentiles``
        (``{"p1": .., "p50": .., "p99": ..}``) and, with a label, ``label_classes``
        (``{class value: voxel count}``, background included).
    """
    values = np.asarray(vol.array, dtype=np.float64)
    pct = np.percentile(values, _PERCENTILES)
    info: dict[str, Any] = {
        "path": str(vol.path),
        "shape": list(vol.shape),
        "spacing": [round(s, 4) for s in vol.spacing],
        "orientation": vol.orientation,
        "affine": [[round(float(v), 6) + 0.0 for v in row] for row in vol.affine],
        "dtype": str(vol.array.dtype),
        "modality": vol.modality,
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "percentiles": {f"p{p:g}": float(v) for p, v in zip(_PERCENTILES, pct, strict=True)},
    }
    if label is not None:
        classes, counts = np.unique(label.array, return_counts=True)
        info["label_classes"] = {int(c): int(n) for c, n in zip(classes, counts, strict=True)}
    return info


def _slice_centre(image: np.ndarray, label: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel through which the three planes pass: the label's centre of mass, else the middle."""
    if label is not None and np.any(label > 0):
        centre = np.argwhere(label > 0).mean(axis=0)
    else:
        centre = (np.asarray(image.shape) - 1) / 2
    x, y, z = (round(float(c)) for c in centre)
    return x, y, z


def _class_colours(n: int) -> np.ndarray:
    """(n, 4) RGBA colours, distinct for up to 60 classes (tab20, tab20b, tab20c)."""
    from matplotlib import colormaps

    table = np.concatenate(
        [colormaps[name](np.arange(20)) for name in ("tab20", "tab20b", "tab20c")]
    )
    return np.asarray(table[np.arange(n) % len(table)])


def plane_slice(array: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """One slice of a RAS-oriented ``(X, Y, Z)`` array, rows top to bottom as displayed.

    axial: rows anterior -> posterior, columns right -> left; coronal: rows superior ->
    inferior, columns right -> left; sagittal: rows superior -> inferior, columns anterior ->
    posterior. ``index`` counts along :data:`PLANE_AXIS` of the plane.

    Returns:
        ``(rows, columns)`` view of ``array``.
    """
    if array.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) array, got shape {array.shape}")
    axis = PLANE_AXIS[plane]
    if not 0 <= index < array.shape[axis]:
        raise ValueError(f"{plane} slice {index} out of range 0..{array.shape[axis] - 1}")
    if plane == "axial":
        return array[::-1, ::-1, index].T
    if plane == "coronal":
        return array[::-1, index, ::-1].T
    return array[index, ::-1, ::-1].T


def plane_aspect(spacing: Sequence[float], plane: Plane) -> float:
    """Row spacing over column spacing of :func:`plane_slice` for voxel ``spacing`` (x, y, z)."""
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def _planes(array: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS array through ``centre`` (x, y, z), rows bottom
    to top as for ``imshow(origin="lower")``: :func:`plane_slice` upside down."""
    return [plane_slice(array, p, centre[PLANE_AXIS[p]])[::-1] for p in PLANES]


@dataclass(frozen=True)
class PreviewPlanes:
    """What the preview shows: per plane, the image and label slices (rows top to bottom as
    displayed, :func:`plane_slice`) and the displayed row / column aspect; the grey window (0.5
    and 99.5 percentiles of the whole volume) and the label classes of the whole label (> 0)."""

    images: dict[Plane, np.ndarray]
    labels: dict[Plane, np.ndarray] | None
    aspects: dict[Plane, float]
    centre: tuple[int, int, int]
    window: tuple[float, float]
    classes: np.ndarray


def preview_planes(vol: Volume, label: Volume | None = None) -> PreviewPlanes:
    """The axial, coronal and sagittal slices the preview displays of ``vol`` (and ``label``).

    Both are reoriented to RAS; the planes pass through the label's centre of mass, else the
    middle of the volume.
    """
    from medcl.transforms.volume import reorient

    image, lab = reorient(vol, label, axcodes="RAS")
    centre = _slice_centre(image.array, None if lab is None else lab.array)
    index = {plane: centre[PLANE_AXIS[plane]] for plane in PLANES}
    lo, hi = np.percentile(image.array, (0.5, 99.5))
    classes = np.zeros(0) if lab is None else np.unique(lab.array[lab.array > 0])
    return PreviewPlanes(
        images={p: plane_slice(image.array, p, index[p]) for p in PLANES},
        labels=None if lab is None else {p: plane_slice(lab.array, p, index[p]) for p in PLANES},
        aspects={p: plane_aspect(image.spacing, p) for p in PLANES},
        centre=centre,
        window=(float(lo), float(hi)),
        classes=classes,
    )


def render_volume_preview(
    vol: Volume, label: Volume | None, out_png: str | Path, *, title: str | None = None
) -> Path:
    """Save a PNG with the mid axial, coronal and sagittal slices, label overlaid in colour.

    Args:
        vol: the image (any orientation; reoriented to RAS for display).
        label: optional label map on ``vol``'s grid; planes pass through its centre of mass.
        out_png: where to write the PNG (parent folders are created).
        title: figure title; defaults to the file name with shape and spacing.

    Returns:
        The PNG's path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    shown = preview_planes(vol, label)
    lo, hi = shown.window
    overlays: dict[Plane, np.ndarray | None] = dict.fromkeys(PLANES)
    cmap = norm = None
    if shown.labels is not None:
        classes = shown.classes
        if classes.size:
            cmap = ListedColormap(_class_colours(classes.size))
            norm = BoundaryNorm(np.arange(0.5, classes.size + 1.5), cmap.N)
            for p, lab_plane in shown.labels.items():
                index = np.searchsorted(classes, lab_plane) + 1  # 1..K, background masked
                index[lab_plane <= 0] = 0
                overlays[p] = np.ma.masked_equal(index, 0)
    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, name in zip(axes, PLANES, strict=True):
        aspect, overlay = shown.aspects[name], overlays[name]
        ax.imshow(shown.images[name], cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        if overlay is not None:
            ax.imshow(
                overlay, cmap=cmap, norm=norm, alpha=0.5, aspect=aspect, interpolation="nearest"
            )
        ax.set_title(name)
        ax.set_axis_off()
    spacing = ", ".join(f"{s:.3g}" for s in vol.spacing)
    fig.suptitle(
        title or f"{vol.path.name}  {vol.shape}  spacing ({spacing}) mm  {vol.orientation}"
    )
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    logger.debug("preview of %s written to %s", vol.path, out)
    return out
