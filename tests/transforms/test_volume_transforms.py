"""Reorientation, resampling and intensity normalisation of volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.config import build_config
from medcl.errors import ConfigError
from medcl.io.volumes import Volume, read_image_and_label
from medcl.transforms.volume import (
    VolumePreprocessConfig,
    preprocess,
    reorient,
    resample,
    scale_percentiles,
    window_ct,
)


def _lps_volume() -> tuple[Volume, Volume]:
    affine = np.array(
        [[-0.5, 0, 0, 30.0], [0, -0.8, 0, 40.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]], dtype=float
    )
    image = np.zeros((6, 5, 4), np.float32)
    image[1, 3, 2] = 50.0
    label = np.zeros((6, 5, 4), np.uint8)
    label[1, 3, 2] = 7
    return Volume(image, affine, Path("img")), Volume(label, affine.copy(), Path("lab"))


def test_reorient_lps_to_ras_keeps_world_position_of_marked_voxel() -> None:
    image, label = _lps_volume()
    world = image.affine @ [1, 3, 2, 1]
    ras_image, ras_label = reorient(image, label, axcodes="RAS")
    assert image.orientation == "LPS" and ras_image.orientation == "RAS"
    assert ras_label is not None and ras_label.orientation == "RAS"
    (index,) = np.argwhere(ras_image.array == 50.0)
    assert tuple(index) == (6 - 1 - 1, 5 - 1 - 3, 2)  # x and y flipped, z kept
    np.testing.assert_allclose(ras_image.affine @ [*index, 1], world)
    np.testing.assert_array_equal(ras_label.array, (ras_image.array > 0) * 7)
    assert ras_label.array.dtype == np.uint8
    np.testing.assert_allclose(ras_image.array[::-1, ::-1, :], image.array)


def test_resample_2mm_to_1mm_spans_the_same_voxel_centres() -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = np.tile(np.arange(10, dtype=np.float32) * 2.0, (3, 3, 1))  # value = z in mm
    label = np.zeros((3, 3, 10), np.int16)
    label[:, :, 5:] = 3
    new_image, new_label = resample(
        Volume(image, affine, Path("i")), Volume(label, affine, Path("l")), spacing=(1.0, 1.0, 1.0)
    )
    assert new_image.shape == (3, 3, 19)  # 10 centres 2 mm apart -> 19 centres 1 mm apart
    assert new_image.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(new_image.affine[:3, 3], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(new_image.array[1, 1, :], np.arange(19.0), atol=1e-4)  # linear
    assert new_label is not None and new_label.array.dtype == np.int16
    assert set(np.unique(new_label.array)) == {0, 3}  # nearest: no new values
    assert new_label.array[1, 1, 9] == 0 and new_label.array[1, 1, 10] == 3


def test_window_ct_and_percentile_scaling() -> None:
    hu = np.array([-2000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0]).reshape(1, 2, 3)
    np.testing.assert_allclose(window_ct(hu, (-1000, 1000)).ravel(), [0, 0, 0.5, 0.75, 1, 1])
    values = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    scaled = scale_percentiles(values, (10, 90))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[0, 0, [0, 10, 50, 90, 100]], [0, 0, 0.5, 1, 1], atol=1e-6)
    mask = values >= 50  # percentiles of 50..100: p0 = 50, p100 = 100
    np.testing.assert_allclose(scale_percentiles(values, (0, 100), mask)[0, 0, [40, 75]], [0, 0.5])
    assert not scale_percentiles(np.ones((2, 2, 2)), (1, 99)).any()  # flat image: zeros


def test_preprocess_reorients_resamples_and_windows() -> None:
    image, label = _lps_volume()
    image.array[0, 0, 0] = 1000.0
    cfg = VolumePreprocessConfig(spacing=(1.0, 1.0, 1.0), intensity="ct", ct_window=(0, 100))
    out, out_label = preprocess(image, label, cfg)
    assert out.orientation == "RAS" and out.spacing == (1.0, 1.0, 1.0)
    assert out_label is not None and out_label.shape == out.shape
    assert out.array.min() >= 0 and out.array.max() == 1.0
    peak = np.unravel_index(np.argmax(np.where(out_label.array == 7, out.array, 0)), out.shape)
    np.testing.assert_allclose(out.affine @ [*peak, 1], image.affine @ [1, 3, 2, 1], atol=1.0)


def test_preprocess_config_validation() -> None:
    assert build_config(VolumePreprocessConfig, {"orientation": "lpi"}).orientation == "LPI"
    with pytest.raises(ConfigError, match=r"key 'orientation'.*one of L/R, A/P, S/I"):
        build_config(VolumePreprocessConfig, {"orientation": "RRS"})
    with pytest.raises(ConfigError, match=r"key 'spacing'.*must be positive"):
        build_config(VolumePreprocessConfig, {"spacing": [1, 0, 1]})
    with pytest.raises(ConfigError, match=r"mr_percentiles must be"):
        build_config(VolumePreprocessConfig, {"mr_percentiles": [99, 1]})
    with pytest.raises(ConfigError, match=r"key 'colour': unknown key"):
        build_config(VolumePreprocessConfig, {"colour": "red"})


@pytest.mark.realdata
def test_real_nrrd_brain_preprocessed_to_ras_isotropic(data_root: Path) -> None:
    base = data_root / "volumes" / "pyradiomics"
    image, label = read_image_and_label(base / "brain1_image.nrrd", base / "brain1_label.nrrd")
    cfg = VolumePreprocessConfig(spacing=(1.5, 1.5, 6.5), intensity="mr", mr_nonzero_only=True)
    out, out_label = preprocess(image, label, cfg)
    assert out.orientation == "RAS" and out_label is not None
    assert out.shape == (134, 134, 25)  # 255 * 0.78125 / 1.5 + 1 = 133.8 -> 134
    assert out.array.min() >= 0.0 and out.array.max() <= 1.0
    volume_mm3 = np.prod(image.spacing) * (label.array > 0).sum()
    new_mm3 = np.prod(out.spacing) * (out_label.array > 0).sum()
    assert abs(new_mm3 - volume_mm3) / volume_mm3 < 0.1  # tumour volume kept within 10 %
