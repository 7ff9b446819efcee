"""Volume summaries and three-plane previews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcl.io.volumes import Volume, read_image_and_label
from medcl.viz.volumes import _planes, _slice_centre, describe_volume, render_volume_preview


def _volume() -> tuple[Volume, Volume]:
    image = np.zeros((20, 16, 6), np.float32)
    image[2:18, 2:14, :] = 100.0
    label = np.zeros((20, 16, 6), np.uint8)
    label[4:8, 4:8, 1:3] = 1
    label[12:16, 8:12, 1:3] = 5
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    return Volume(image, affine, Path("img.nii.gz")), Volume(label, affine, Path("lab.nii.gz"))


def test_describe_volume_counts_label_classes() -> None:
    image, label = _volume()
    info = describe_volume(image, label)
    assert info["shape"] == [20, 16, 6] and info["spacing"] == [1.0, 1.0, 3.0]
    assert info["orientation"] == "RAS" and info["dtype"] == "float32"
    assert info["min"] == 0.0 and info["max"] == 100.0
    assert info["mean"] == pytest.approx(100.0 * 16 * 12 / (20 * 16))
    assert info["label_classes"] == {0: 20 * 16 * 6 - 64, 1: 32, 5: 32}
    assert set(info["percentiles"]) == {"p1", "p50", "p99"}


def test_planes_are_radiological_and_centred_on_the_label() -> None:
    array = np.zeros((5, 4, 3))
    array[4, 3, 2] = 1.0  # most right, most anterior, most superior voxel (RAS)
    axial, coronal, sagittal = _planes(array, (4, 3, 2))
    assert axial.shape == (4, 5) and axial[-1, 0] == 1.0  # anterior at top, right on the left
    assert coronal.shape == (3, 5) and coronal[-1, 0] == 1.0  # superior at top, right on the left
    assert sagittal.shape == (3, 4) and sagittal[-1, 0] == 1.0  # superior at top, anterior left
    _, label = _volume()
    assert _slice_centre(label.array, label.array) == (10, 8, 2)
    assert _slice_centre(label.array, None) == (10, 8, 2)  # (shape - 1) / 2 rounded


def test_render_preview_writes_png_with_coloured_overlay(tmp_path: Path) -> None:
    image, label = _volume()
    out = render_volume_preview(image, label, tmp_path / "a" / "p.png", title="synthetic")
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert rgb.shape == (480, 1300, 3)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 60).sum() > 500  # coloured label pixels, not only grey
    plain = render_volume_preview(image, None, tmp_path / "plain.png")
    rgb = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 60).sum() == 0  # no overlay: grey only


@pytest.mark.realdata
def test_real_ct_preview(data_root: Path, tmp_path: Path) -> None:
    base = data_root / "volumes" / "totalsegmentator"
    image, label = read_image_and_label(base / "example_ct_sm.nii.gz", base / "example_seg.nii.gz")
    info = describe_volume(image, label)
    assert len(info["label_classes"]) == 42 and info["min"] == -1100.0
    out = render_volume_preview(image, label, tmp_path / "ct.png")
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    colours = {tuple(c) for c in rgb[rgb.max(axis=2) - rgb.min(axis=2) > 60] // 16}
    assert len(colours) > 10  # many organs, distinct colours
