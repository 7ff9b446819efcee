"""Volumes as stacks of 2D slices: the paper's setting (Chaitanya et al. train a 2D UNet on slices).

:func:`prepare_volume` turns a :class:`~medcl.io.volumes.Volume` (and its label) into an array of
shape ``(Z, H, W)``: reoriented to RAS so that every volume runs inferior -> superior along ``Z``
(partitions then mean the same anatomy in every volume), intensities normalised (CT window, MR
percentiles) and each slice brought to a common in-plane grid ``(H, W)`` by one of
(:class:`InplaneConfig`):

* ``"spacing"``: resample in plane to a fixed resolution (``spacing_mm``), then centre crop or pad
  to ``(H, W)`` (Chaitanya et al. resample ACDC to 1.367 mm and crop 192 x 192): the same
  millimetres per pixel in every volume, so a structure has the same size in pixels everywhere;
* ``"fixed"``: for files whose header carries no spacing (an identity affine), scale each slice so
  that its shorter side is ``short_side`` pixels (aspect kept), then centre crop or pad;
* ``"resize"``: stretch the whole slice to ``(H, W)`` (the field of view decides the scale;
  kept for comparison with earlier runs);
* ``"auto"`` (default): ``"spacing"`` when the affine is not the identity, else ``"fixed"``.

What was used is stored in ``PreparedVolume.meta["inplane"]`` and logged. Labels are mapped to
class indices ``0..C`` (0 = background) by the configured class values.
:func:`restore_prediction` maps a predicted ``(Z, H, W)`` mask back onto the input's voxel grid
(undoing the crop / pad and the scaling), so it can be saved with the input's affine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.io.volumes import Volume
from medcl.transforms.orientation import from_ras, ras_shape, ras_spacing, to_ras
from medcl.transforms.volume import scale_percentiles, window_ct

log = logging.getLogger(__name__)

IntensityMode = Literal["auto", "ct", "mr"]
OtherLabels = Literal["error", "background"]


class InplaneConfig(StrictModel):
    """How slices reach the common in-plane grid (see the module docstring)."""

    mode: Literal["auto", "spacing", "fixed", "resize"] = "auto"
    spacing_mm: float = Field(default=2.0, gt=0, description="target mm per pixel ('spacing')")
    short_side: int = Field(
        default=128, ge=8, description="pixels of the shorter side ('fixed', no spacing known)"
    )


@dataclass(frozen=True)
class InplaneGeometry:
    """How one volume's ``(H0, W0)`` slices became ``(H, W)``: scale, then crop / pad.

    ``scaled`` is the slice size after scaling; ``offset`` the ``(top, left)`` of the output
    window inside the scaled slice (negative where the output is padded).
    """

    source: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]
    description: str


def spacing_known(affine: np.ndarray) -> bool:
    """False for an identity affine (headers written without spacing), else True."""
    return not np.allclose(np.asarray(affine, dtype=np.float64), np.eye(4))


def inplane_geometry(
    source_hw: tuple[int, int],
    spacing_hw: tuple[float, float] | None,
    size: tuple[int, int],
    cfg: InplaneConfig,
) -> InplaneGeometry:
    """The scale and centre crop that bring ``source_hw`` slices to ``size``.

    Args:
        source_hw: ``(H0, W0)`` of the RAS slice stack.
        spacing_hw: mm per pixel along rows and columns, ``None`` when unknown.
        size: the output ``(H, W)``.
        cfg: the mode and its target.
    """
    h0, w0 = source_hw
    mode = cfg.mode
    if mode == "auto":
        mode = "spacing" if spacing_hw is not None else "fixed"
    if mode == "spacing" and spacing_hw is None:
        raise ValueError("in-plane mode 'spacing' needs the voxel spacing, which is unknown")
    if mode == "resize":
        return InplaneGeometry(source_hw, size, (0, 0), size, "resized to the output size")
    if mode == "spacing":
        assert spacing_hw is not None
        fy, fx = spacing_hw[0] / cfg.spacing_mm, spacing_hw[1] / cfg.spacing_mm
        text = (
            f"resampled from {spacing_hw[0]:.3g} x {spacing_hw[1]:.3g} mm to "
            f"{cfg.spacing_mm:.3g} mm per pixel"
        )
    else:
        fy = fx = cfg.short_side / min(h0, w0)
        text = f"no spacing known: scaled so the shorter side is {cfg.short_side} px"
    scaled = (max(1, round(h0 * fy)), max(1, round(w0 * fx)))
    offset = ((scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2)
    return InplaneGeometry(
        source_hw, scaled, offset, size, f"{text}, centre {size[0]} x {size[1]} window"
    )


def _window(stack: np.ndarray, offset: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The ``size`` window of ``(Z, H, W)`` at ``offset`` (zero outside the stack)."""
    z, h, w = stack.shape
    out = np.zeros((z, *size), dtype=stack.dtype)
    top, left = offset
    ys, ye = max(top, 0), min(top + size[0], h)
    xs, xe = max(left, 0), min(left + size[1], w)
    if ye > ys and xe > xs:
        out[:, ys - top : ye - top, xs - left : xe - left] = stack[:, ys:ye, xs:xe]
    return out


def apply_geometry(stack: np.ndarray, geo: InplaneGeometry, *, nearest: bool) -> np.ndarray:
    """``(Z, H0, W0)`` -> ``(Z, H, W)``: scale then crop / pad as ``geo`` says."""
    scaled = (
        stack if geo.scaled == geo.source else _resize_stack(stack, geo.scaled, nearest=nearest)
    )
    if geo.scaled == geo.size and geo.offset == (0, 0):
        return scaled
    return _window(scaled, geo.offset, geo.size)


def invert_geometry(stack: np.ndarray, geo: InplaneGeometry) -> np.ndarray:
    """Class indices ``(Z, H, W)`` back to ``(Z, H0, W0)`` (outside the window: background)."""
    canvas = _window(stack, (-geo.offset[0], -geo.offset[1]), geo.scaled)
    if geo.scaled == geo.source:
        return canvas
    return _resize_stack(canvas, geo.source, nearest=True)


@dataclass
class PreparedVolume:
    """A volume ready for slice-wise training.

    Attributes:
        id: a name for logs and outputs (the file stem by default).
        image: ``(Z, H, W)`` float32 in [0, 1], RAS, Z = inferior -> superior.
        label: ``(Z, H, W)`` int64 class indices (0 = background), or ``None``.
        modality: ``"ct"`` or ``"mr"`` (how the intensities were normalised).
        affine: the input's ``(4, 4)`` affine (voxel -> RAS mm).
        shape: the input's ``(X, Y, Z)`` shape.
        path: the input file or folder.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    modality: Literal["ct", "mr"]
    affine: np.ndarray
    shape: tuple[int, int, int]
    path: str
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.image.shape[0])


def guess_modality(vol: Volume) -> Literal["ct", "mr"]:
    """``"ct"`` when the DICOM/BIDS modality says so or values reach below -200 (HU air)."""
    tag = (vol.modality or "").lower()
    if tag == "ct":
        return "ct"
    if tag in {"mr", "t1w", "t2w", "t2star", "flair"}:
        return "mr"
    return "ct" if float(np.min(vol.array)) < -200 else "mr"


def map_labels(
    label: np.ndarray,
    class_values: Sequence[int] | None,
    *,
    other_labels: OtherLabels = "error",
    source: str = "label",
) -> np.ndarray:
    """Map label values to class indices: ``class_values[i]`` -> ``i + 1``, the rest -> 0.

    Args:
        label: integer array of label values.
        class_values: the label value of each named class, in class order; ``None`` keeps every
            non-zero value present, in increasing order.
        other_labels: what to do with a non-zero value not in ``class_values``: ``"error"``
            (default: a label map with classes the config does not name is refused) or
            ``"background"``.
        source: file named in errors.

    Raises:
        InvalidInputError: a value not named while ``other_labels="error"``.
    """
    present = sorted(int(v) for v in np.unique(label) if v != 0)
    values = present if class_values is None else [int(v) for v in class_values]
    unknown = sorted(set(present) - set(values))
    if unknown and other_labels == "error":
        shown = ", ".join(map(str, unknown[:12])) + (" ..." if len(unknown) > 12 else "")
        raise InvalidInputError(
            source,
            f"label map has values {shown} that the config's classes do not name; add them to "
            "classes or set other_labels: background",
        )
    lut = np.zeros(max([*present, *values, 0]) + 1, dtype=np.int64)
    for i, v in enumerate(values):
        if v > 0:
            lut[v] = i + 1
    return lut[np.asarray(label, dtype=np.int64)]


def _resize_stack(stack: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resize ``(Z, H, W)`` slice-wise to ``(Z, *size)``."""
    t = torch.from_numpy(np.ascontiguousarray(stack)).unsqueeze(1)
    if nearest:
        out = F.interpolate(t.float(), size=size, mode="nearest-exact")
        return out.squeeze(1).to(torch.int64).numpy()
    out = F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(1).numpy().astype(np.float32)


def prepare_volume(
    image: Volume,
    label: Volume | None = None,
    *,
    size: tuple[int, int] = (128, 128),
    intensity: IntensityMode = "auto",
    ct_window: tuple[float, float] = (-250.0, 250.0),
    mr_percentiles: tuple[float, float] = (1.0, 99.0),
    class_values: Sequence[int] | None = None,
    other_labels: OtherLabels = "error",
    volume_id: str | None = None,
    inplane: InplaneConfig | None = None,
) -> PreparedVolume:
    """Reorient to RAS, normalise, bring slices to ``size``; the label gets class indices.

    Returns:
        :class:`PreparedVolume` with ``image`` and ``label`` of shape ``(Z, H, W)`` where
        ``(H, W) = size`` and ``Z`` is the number of axial slices; ``meta["inplane"]`` says how
        the slices were scaled (see :class:`InplaneConfig`; without ``inplane`` slices are
        stretched to ``size``, the behaviour of earlier versions).
    """
    modality = guess_modality(image) if intensity == "auto" else intensity
    arr = np.asarray(image.array, dtype=np.float32)
    norm = window_ct(arr, ct_window) if modality == "ct" else scale_percentiles(arr, mr_percentiles)
    ras = to_ras(norm, image.affine)  # (X, Y, Z) in R, A, S order
    # slice stack (Z, H, W): anterior at the top row, patient left -> right along the columns
    stack = np.transpose(ras, (2, 1, 0))[:, ::-1, :]
    known = spacing_known(image.affine)
    sx, sy, _ = ras_spacing(image.affine)
    geo = inplane_geometry(
        (int(stack.shape[1]), int(stack.shape[2])),
        (sy, sx) if known else None,
        (int(size[0]), int(size[1])),
        inplane or InplaneConfig(mode="resize"),
    )
    prepared_label = None
    if label is not None:
        mapped = map_labels(
            label.array, class_values, other_labels=other_labels, source=str(label.path)
        )
        lab = np.transpose(to_ras(mapped, image.affine), (2, 1, 0))[:, ::-1, :]
        prepared_label = apply_geometry(lab, geo, nearest=True)
    vid = volume_id or _stem(str(image.path))
    log.debug("%s: %s", vid, geo.description)
    return PreparedVolume(
        id=vid,
        image=apply_geometry(stack, geo, nearest=False),
        label=prepared_label,
        modality=modality,
        affine=np.asarray(image.affine, dtype=np.float64),
        shape=tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
        path=str(image.path),
        meta={"inplane": geo.description, "geometry": geo},
    )


def restore_probabilities(probs: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """Class probabilities ``(Z, C, H, W)`` -> class indices on the input's ``(X, Y, Z)`` grid.

    The probabilities are put back into the scaled slice (background where the output window
    did not reach), resized bilinearly to the source slice size and only then turned into labels,
    which gives smoother boundaries than resizing a label map by nearest neighbour.
    """
    geo = prepared.meta.get("geometry")
    p = np.asarray(probs, dtype=np.float32)
    if not isinstance(geo, InplaneGeometry):
        return restore_prediction(p.argmax(1), prepared)
    z, c, h, w = p.shape
    canvas = np.zeros((z, c, *geo.scaled), dtype=np.float32)
    canvas[:, 0] = 1.0
    top, left = geo.offset
    ys, ye = max(-top, 0), min(geo.scaled[0] - top, h)
    xs, xe = max(-left, 0), min(geo.scaled[1] - left, w)
    if ye > ys and xe > xs:
        canvas[:, :, ys + top : ye + top, xs + left : xe + left] = p[:, :, ys:ye, xs:xe]
    if geo.scaled != geo.source:
        t = F.interpolate(torch.from_numpy(canvas), size=geo.source, mode="bilinear")
        canvas = t.numpy()
    labels = canvas.argmax(1).astype(np.int64)
    ras = np.transpose(labels[:, ::-1, :], (2, 1, 0))
    return from_ras(ras, prepared.affine).astype(np.uint8)


def restore_prediction(pred: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """Map a ``(Z, H, W)`` class-index prediction back onto the input's ``(X, Y, Z)`` grid."""
    geo = prepared.meta.get("geometry")
    if isinstance(geo, InplaneGeometry):
        stack = invert_geometry(np.asarray(pred, dtype=np.int64), geo)
    else:  # a volume prepared by stretching to the output size
        x, y, _ = ras_shape(prepared.shape, prepared.affine)
        stack = _resize_stack(np.asarray(pred, dtype=np.int64), (y, x), nearest=True)
    ras = np.transpose(stack[:, ::-1, :], (2, 1, 0))
    return from_ras(ras, prepared.affine).astype(np.uint8)


def _stem(path: str) -> str:
    name = path.rstrip("/").split("/")[-1]
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _seed_transforms(transforms: Sequence[object], seed: int) -> None:
    """Seed each transform that has ``set_random_state`` with its own seed derived from ``seed``.

    MONAI's random transforms draw from a generator of their own, created unseeded when MONAI is
    imported: without this, two runs with the same seed augment differently, and every
    DataLoader worker inherits the same generator state, so the workers draw the same
    augmentations.
    """
    rng = np.random.RandomState(seed % 2**32)
    for transform in transforms:
        sub = int(rng.randint(0, 2**31 - 1))
        setter = getattr(transform, "set_random_state", None)
        if setter is not None:
            setter(seed=sub)


class SliceViewsDataset(Dataset[dict[str, torch.Tensor]]):
    """Slices of prepared volumes with two augmented views, for contrastive pretraining.

    Args:
        volumes: the prepared volumes.
        volume_of, slice_of, partition_of: ``(N,)`` arrays giving, for flat slice ``i``, its
            volume (index into ``volumes``), slice and partition (a
            :class:`~medcl.pretrain.partitions.SliceIndex`'s arrays).
        views: ``{"ct": TwoViews, "mr": TwoViews}``: each slice uses its volume's modality.

    Item ``i`` is ``{"view1": (1, H, W), "view2": (1, H, W), "volume": (), "partition": ()}``.
    :meth:`set_random_state` seeds the views (DataLoader workers are reseeded each by
    :func:`medcl.engine.seed.worker_init_fn`).
    """

    def __init__(
        self,
        volumes: Sequence[PreparedVolume],
        volume_of: np.ndarray,
        slice_of: np.ndarray,
        partition_of: np.ndarray,
        views: Mapping[str, Callable[[dict[str, torch.Tensor]], tuple[dict[str, Any], ...]]],
    ) -> None:
        missing = {v.modality for v in volumes} - set(views)
        if missing:
            raise ValueError(f"no view transform for modality {sorted(missing)}")
        self.volumes = list(volumes)
        self.volume_of = volume_of
        self.slice_of = slice_of
        self.partition_of = partition_of
        self.views = views

    def set_random_state(self, seed: int) -> None:
        """Seed the view transforms (MONAI's draw from their own generator, not NumPy's)."""
        _seed_transforms(list(self.views.values()), seed)

    def __len__(self) -> int:
        return len(self.volume_of)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, z = int(self.volume_of[i]), int(self.slice_of[i])
        vol = self.volumes[v]
        img = torch.from_numpy(vol.image[z][None].copy())
        v1, v2 = self.views[vol.modality]({"image": img})
        return {
            "view1": torch.as_tensor(v1["image"]).float(),
            "view2": torch.as_tensor(v2["image"]).float(),
            "volume": torch.tensor(v),
            "partition": torch.tensor(int(self.partition_of[i])),
        }


class LabelledSliceDataset(Dataset[dict[str, torch.Tensor]]):
    """Labelled slices ``(volume index, z)`` with an optional dictionary transform.

    Returns ``{"image": (1, H, W) float, "label": (1, H, W) int64}``. :meth:`set_random_state`
    seeds the transform (DataLoader workers are reseeded each by
    :func:`medcl.engine.seed.worker_init_fn`).
    """

    def __init__(
        self,
        volumes: Sequence[PreparedVolume],
        slices: Sequence[tuple[int, int]],
        transform: object | None = None,
    ) -> None:
        for v, _ in slices:
            if volumes[v].label is None:
                raise InvalidInputError(volumes[v].path, "volume has no label map")
        self.volumes = list(volumes)
        self.slices = list(slices)
        self.transform = transform

    def set_random_state(self, seed: int) -> None:
        """Seed the transform (MONAI's draw from their own generator, not NumPy's)."""
        _seed_transforms([self.transform], seed)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, z = self.slices[i]
        vol = self.volumes[v]
        assert vol.label is not None
        sample: Mapping[str, torch.Tensor] = {
            "image": torch.from_numpy(vol.image[z][None].copy()),
            "label": torch.from_numpy(vol.label[z][None].copy()),
        }
        if self.transform is not None:
            sample = self.transform(dict(sample))  # type: ignore[operator]
        return {
            "image": torch.as_tensor(sample["image"]).float(),
            "label": torch.as_tensor(sample["label"]).long(),
        }
