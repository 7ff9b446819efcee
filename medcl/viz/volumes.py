"""Look at a volume: a summary dict and a three-plane PNG preview with the label overlaid.

The preview first reorients image and label to RAS, then shows the axial, coronal and sagittal
slices in radiological convention (patient's right on the viewer's left, anterior up in the
axial view, superior up in the others), with pixel aspect taken from the voxel spacing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medcl.io.volumes import Volume

logger = logging.getLogger(__name__)

_PERCENTILES = (1.0, 50.0, 99.0)


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


def _planes(array: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS array, oriented for ``imshow(origin="lower")``."""
    x, y, z = centre
    return [
        array[::-1, :, z].T,  # rows P->A (anterior up), columns R->L (radiological)
        array[::-1, y, :].T,  # rows I->S, columns R->L
        array[x, ::-1, :].T,  # rows I->S, columns A->P (anterior on the left)
    ]


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

    from medcl.transforms.volume import reorient

    image, lab = reorient(vol, label, axcodes="RAS")
    sx, sy, sz = image.spacing
    centre = _slice_centre(image.array, None if lab is None else lab.array)
    lo, hi = np.percentile(image.array, (0.5, 99.5))
    names = ("axial", "coronal", "sagittal")
    aspects = (sy / sx, sz / sx, sz / sy)  # row spacing / column spacing
    overlays: list[np.ndarray | None] = [None, None, None]
    cmap = norm = None
    if lab is not None:
        classes = np.unique(lab.array[lab.array > 0])
        if classes.size:
            index = np.searchsorted(classes, lab.array) + 1  # 1..K for classes, background masked
            index[lab.array <= 0] = 0
            overlays = [np.ma.masked_equal(p, 0) for p in _planes(index, centre)]
            cmap = ListedColormap(_class_colours(classes.size))
            norm = BoundaryNorm(np.arange(0.5, classes.size + 1.5), cmap.N)
    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, plane, overlay, aspect, name in zip(
        axes, _planes(image.array, centre), overlays, aspects, names, strict=True
    ):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
        if overlay is not None:
            ax.imshow(
                overlay,
                cmap=cmap,
                norm=norm,
                alpha=0.5,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
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
