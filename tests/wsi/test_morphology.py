"""Shift-based disk morphology equals scipy.ndimage's with skimage's disk."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk

from medcl.wsi.morphology import (
    binary_closing,
    binary_dilation,
    binary_erosion,
    binary_opening,
    disk_offsets,
)


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_disk_offsets_are_skimage_disk(radius: int) -> None:
    expected = {
        (int(y) - radius, int(x) - radius) for y, x in zip(*np.nonzero(disk(radius)), strict=True)
    }
    assert set(disk_offsets(radius)) == expected


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("density", [0.3, 0.6, 0.9])
def test_operations_equal_scipy(radius: int, density: float) -> None:
    rng = np.random.default_rng(radius)
    mask = rng.random((57, 83)) < density
    mask[:, :3] = True  # tissue touching the border
    footprint = disk(radius)
    pairs = [
        (binary_erosion, ndi.binary_erosion),
        (binary_dilation, ndi.binary_dilation),
        (binary_opening, ndi.binary_opening),
        (binary_closing, ndi.binary_closing),
    ]
    for ours, reference in pairs:
        np.testing.assert_array_equal(ours(mask, radius), reference(mask, footprint))


def test_radius_zero_is_identity_and_negative_is_refused() -> None:
    mask = np.eye(5, dtype=bool)
    np.testing.assert_array_equal(binary_opening(mask, 0), mask)
    with pytest.raises(ValueError, match="radius"):
        disk_offsets(-1)
