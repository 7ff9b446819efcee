"""The ``medcl data inspect`` preview and the review viewer show a volume the same way up."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.io.volumes import read_image_and_label
from medcl.review import views
from medcl.viz.volumes import PLANE_AXIS, PLANES, preview_planes


def _non_ras_anisotropic(tmp_path: Path) -> tuple[Path, Path]:
    """A (6, 5, 4) volume stored P-S-L (axes permuted and flipped) with voxels 0.8 x 3 x 1.5 mm."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[1:3, 2:4, 0:2] = 1
    label[4, 0, 3] = 2
    affine = np.array(
        [
            [0.0, 0.0, -1.5, 10.0],  # array axis 2 runs to the patient's left
            [-0.8, 0.0, 0.0, 20.0],  # array axis 0 runs posterior
            [0.0, 3.0, 0.0, -5.0],  # array axis 1 runs superior
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"


def test_preview_and_review_viewer_display_the_same_arrays(tmp_path: Path) -> None:
    image_path, label_path = _non_ras_anisotropic(tmp_path)
    image, label = read_image_and_label(image_path, label_path)
    assert image.orientation == "PSL"
    shown = preview_planes(image, label)
    case = views.load_volume_case(image_path, label_path)
    assert case.image.shape == (4, 6, 5) and case.spacing == pytest.approx((1.5, 0.8, 3.0))
    for plane in PLANES:
        index = shown.centre[PLANE_AXIS[plane]]
        np.testing.assert_array_equal(
            shown.images[plane], views.plane_slice(case.image, plane, index)
        )
        assert shown.labels is not None
        np.testing.assert_array_equal(
            shown.labels[plane], views.plane_slice(case.mask, plane, index)
        )
        assert shown.aspects[plane] == views.plane_aspect(case.spacing, plane)
    # and the orientation is the radiological one: the voxel stored at [4, 0, 3] is posterior
    # (x index 4 of 6 along P), inferior (first along S) and on the patient's left (last along L)
    # -> RAS (0, 1, 0): shown in the axial plane at the bottom (posterior) on the right (left side)
    assert np.argwhere(case.mask == 2).tolist() == [[0, 1, 0]]
    axial = views.plane_slice(case.mask, "axial", 0)
    assert np.argwhere(axial == 2).tolist() == [[axial.shape[0] - 2, axial.shape[1] - 1]]
