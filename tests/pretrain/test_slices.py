"""Slice preparation: RAS stacks, class mapping, and predictions restored onto the input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.errors import InvalidInputError
from medcl.io.volumes import Volume
from medcl.pretrain.slices import map_labels, prepare_volume, restore_prediction


def _volume(array: np.ndarray, affine: np.ndarray, path: str = "x.nii.gz") -> Volume:
    return Volume(array=array, affine=affine, path=Path(path), meta={})


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 1.0, 2.0, 1.0]),  # RAS
        np.diag([-1.0, -1.0, 2.0, 1.0]),  # LPS
        np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),  # permuted
    ],
)
def test_restore_prediction_inverts_prepare(affine: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    shape = (12, 10, 6)
    label = rng.integers(0, 3, size=shape).astype(np.int16)
    image = rng.normal(0, 100, size=shape).astype(np.float32)
    # the prepared size equals the RAS in-plane size, so resizing is the identity
    import nibabel as nib

    ras_shape = nib.orientations.apply_orientation(
        label, nib.orientations.io_orientation(affine)
    ).shape
    prep = prepare_volume(
        _volume(image, affine),
        _volume(label, affine, "y.nii.gz"),
        size=(ras_shape[1], ras_shape[0]),
        intensity="mr",
    )
    assert prep.image.shape == (ras_shape[2], ras_shape[1], ras_shape[0])
    assert prep.label is not None
    back = restore_prediction(prep.label, prep)
    np.testing.assert_array_equal(back, label)


def test_stack_runs_inferior_to_superior_with_anterior_up() -> None:
    # a marker at the most superior, most anterior, most right voxel of an LPS volume
    shape = (4, 5, 3)
    arr = np.zeros(shape, np.float32)
    arr[0, 0, 2] = 1000.0  # LPS: x=0 is the right-most, y=0 the anterior-most, z=2 superior
    prep = prepare_volume(
        _volume(arr, np.diag([-1.0, -1.0, 1.0, 1.0])),
        size=(5, 4),
        intensity="ct",
        ct_window=(0, 1000),
    )
    z, row, col = np.unravel_index(np.argmax(prep.image), prep.image.shape)
    assert (z, row, col) == (2, 0, 3)  # last slice, top row, last column (patient's right)


def test_map_labels_named_classes_and_errors() -> None:
    lab = np.array([0, 5, 7, 5, 9])
    np.testing.assert_array_equal(
        map_labels(lab, [7, 5], other_labels="background"), [0, 2, 1, 2, 0]
    )
    np.testing.assert_array_equal(map_labels(lab, None), [0, 1, 2, 1, 3])
    with pytest.raises(InvalidInputError, match=r"seg\.nii\.gz: label map has values 9 that"):
        map_labels(lab, [5, 7], source="seg.nii.gz")
