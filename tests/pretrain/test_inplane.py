"""In-plane geometry: resampling to mm/px or a fixed size, real crops, and the way back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.io.volumes import Volume
from medcl.pretrain.slices import (
    InplaneConfig,
    inplane_geometry,
    prepare_volume,
    restore_prediction,
    restore_probabilities,
    spacing_known,
)
from medcl.transforms.views import geometric_transform


def _vol(array: np.ndarray, affine: np.ndarray, path: str = "x.nii.gz") -> Volume:
    return Volume(array=array, affine=affine, path=Path(path), meta={})


def test_spacing_mode_gives_the_same_mm_per_pixel_whatever_the_field_of_view() -> None:
    cfg = InplaneConfig(mode="spacing", spacing_mm=2.0)
    small = inplane_geometry((100, 120), (1.0, 1.0), (64, 64), cfg)
    coarse = inplane_geometry((50, 60), (2.0, 2.0), (64, 64), cfg)
    assert small.scaled == coarse.scaled == (50, 60)
    assert small.offset == (-7, -2)  # padded: the window is larger than the scaled slice
    assert "resampled from 1 x 1 mm to 2 mm per pixel" in small.description


def test_fixed_mode_scales_the_shorter_side_and_keeps_the_aspect() -> None:
    geo = inplane_geometry((232, 256), None, (80, 80), InplaneConfig(short_side=106))
    assert geo.scaled == (106, 117)
    assert geo.offset == (13, 18)
    assert geo.description.startswith("no spacing known")
    with pytest.raises(ValueError, match="needs the voxel spacing"):
        inplane_geometry((10, 10), None, (8, 8), InplaneConfig(mode="spacing"))


def test_identity_affine_means_unknown_spacing() -> None:
    assert not spacing_known(np.eye(4))
    assert spacing_known(np.diag([1.5, 1.5, 8.0, 1.0]))


def test_centre_window_is_a_real_crop_and_restores_onto_the_grid() -> None:
    # a 40 x 40 slice at 1 mm, window 16 x 16 at 1 mm: the centre is kept, the rest cut
    label = np.zeros((40, 40, 3), np.int16)
    label[16:24, 14:26, :] = 1  # inside the centre window
    label[0:3, 0:3, :] = 2  # outside it
    image = label.astype(np.float32) * 100
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    prep = prepare_volume(
        _vol(image, affine),
        _vol(label, affine, "y.nii.gz"),
        size=(16, 16),
        intensity="mr",
        inplane=InplaneConfig(mode="spacing", spacing_mm=1.0),
    )
    assert prep.image.shape == (3, 16, 16)
    assert prep.label is not None and 2 not in np.unique(prep.label)
    assert int((prep.label == 1).sum()) == int((label == 1).sum())
    back = restore_prediction(prep.label, prep)
    expected = np.where(label == 2, 0, label)  # outside the window: background
    np.testing.assert_array_equal(back, expected)
    probs = np.stack([(prep.label == c).astype(np.float32) for c in range(3)], axis=1)
    np.testing.assert_array_equal(restore_probabilities(probs, prep), expected)


def test_resampled_labels_come_back_at_source_resolution() -> None:
    label = np.zeros((48, 48, 2), np.int16)
    label[10:30, 12:40, :] = 1
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    prep = prepare_volume(
        _vol(label.astype(np.float32), affine),
        _vol(label, affine, "y.nii.gz"),
        size=(32, 32),
        intensity="mr",
        inplane=InplaneConfig(mode="spacing", spacing_mm=2.0),
    )
    assert prep.label is not None and prep.label.shape == (2, 32, 32)
    probs = np.stack([(prep.label == c).astype(np.float32) for c in range(2)], axis=1)
    back = restore_probabilities(probs, prep)
    assert back.shape == label.shape
    dice = 2 * ((back == 1) & (label == 1)).sum() / ((back == 1).sum() + (label == 1).sum())
    assert dice > 0.95


def test_crop_scale_zooms_in_and_keeps_the_label_aligned() -> None:
    img = torch.zeros(1, 32, 32)
    img[:, 8:24, 8:24] = 1.0
    sample = {"image": img, "label": (img > 0.5).long()}
    fixed = geometric_transform(2, 32, flip_prob=0, affine_prob=0, elastic_prob=0)
    fixed.set_random_state(0)
    assert torch.equal(torch.as_tensor(fixed(dict(sample))["image"]), img)  # a no-op
    zoom = geometric_transform(
        2, 32, flip_prob=0, affine_prob=0, elastic_prob=0, crop_scale=(0.5, 0.6)
    )
    zoom.set_random_state(0)
    out = zoom(dict(sample))
    image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    assert image.shape == label.shape == (1, 32, 32)
    assert float((label > 0).float().mean()) > float((img > 0).float().mean())  # zoomed in
    fg, lab = image > 0.5, label > 0  # bilinear image vs nearest label: edges may differ by 1 px
    assert float((fg & lab).sum() / (fg | lab).sum()) > 0.85
    with pytest.raises(ValueError, match="crop_scale"):
        geometric_transform(2, 32, crop_scale=(0.0, 1.0))
