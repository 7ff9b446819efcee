"""Slice preparation: RAS stacks, class mapping, and predictions restored onto the input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medcl.engine.seed import worker_init_fn
from medcl.errors import InvalidInputError
from medcl.io.volumes import Volume
from medcl.pretrain.slices import (
    LabelledSliceDataset,
    PreparedVolume,
    map_labels,
    prepare_volume,
    restore_prediction,
)
from medcl.transforms.views import global_view_transform


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


def _augmented_slices(items: int) -> LabelledSliceDataset:
    rng = np.random.default_rng(0)
    image = rng.random((1, 24, 24), dtype=np.float32)
    label = (image > 0.5).astype(np.int64)
    vol = PreparedVolume("v", image, label, "mr", np.eye(4), (24, 24, 1), "v.nii.gz")
    transform = global_view_transform(2, "mr", (24, 24), crop_scale=(0.5, 1.0))
    return LabelledSliceDataset([vol], [(0, 0)] * items, transform)


def _draws(loader: DataLoader[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [batch["image"][0] for batch in loader]


def test_the_same_seed_gives_the_same_augmentations_and_another_seed_others() -> None:
    # MONAI's random transforms have a generator of their own, unseeded by seed_everything
    dataset = _augmented_slices(3)
    dataset.set_random_state(7)
    first = [dataset[i]["image"] for i in range(3)]
    dataset.set_random_state(7)
    again = [dataset[i]["image"] for i in range(3)]
    dataset.set_random_state(8)
    other = [dataset[i]["image"] for i in range(3)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])  # a new draw per item
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.slow
def test_each_dataloader_worker_draws_its_own_augmentations_reproducibly() -> None:
    def loader() -> DataLoader[dict[str, torch.Tensor]]:
        dataset = _augmented_slices(4)
        dataset.set_random_state(0)
        torch.manual_seed(0)  # the workers' seeds come from torch's generator
        return DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=worker_init_fn)

    draws = _draws(loader())
    # items 0 and 1 are the first draws of worker 0 and worker 1: one generator copied into
    # both workers would make them equal
    assert not torch.equal(draws[0], draws[1])
    for a, b in zip(draws, _draws(loader()), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
