"""Run-based connected components equal scipy.ndimage / skimage on random and tissue masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import morphology

from medcl.testing.slides import SyntheticTissue
from medcl.wsi.components import (
    bounding_boxes,
    component_masks,
    fill_holes,
    find_runs,
    label,
    remove_small_holes,
    remove_small_objects,
)

EIGHT = np.ones((3, 3), dtype=bool)


def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.random((40, 70)) < p for p in (0.2, 0.45, 0.6, 0.8)]
    out.append(SyntheticTissue(200, 260, seed=1).mask(0, 0, 200, 260))
    spiral = np.zeros((41, 41), dtype=bool)  # one long snake: many propagation steps
    for k in range(0, 20, 2):
        spiral[k, k : 41 - k] = spiral[40 - k, k : 41 - k] = True
        spiral[k : 41 - k, 40 - k] = spiral[k + 2 : 41 - k, k] = True
    out += [spiral, np.zeros((5, 6), bool), np.ones((5, 6), bool), np.eye(9, dtype=bool)]
    return out


@pytest.mark.parametrize("index", range(9))
def test_label_and_boxes_equal_scipy(index: int) -> None:
    mask = masks()[index]
    for connectivity, structure in ((1, None), (2, EIGHT)):
        ours, n = label(mask, connectivity)
        ref, n_ref = ndi.label(mask, structure=structure)
        assert n == n_ref
        np.testing.assert_array_equal(ours, ref)
        assert bounding_boxes(find_runs(mask, connectivity)) == ndi.find_objects(ref)


@pytest.mark.parametrize("index", range(9))
def test_clean_up_equals_skimage_and_scipy(index: int) -> None:
    mask = masks()[index]
    for size in (0, 3, 40):
        np.testing.assert_array_equal(
            remove_small_objects(mask, size, 2),
            morphology.remove_small_objects(mask, connectivity=2, max_size=size),
        )
        np.testing.assert_array_equal(
            remove_small_holes(mask, size), morphology.remove_small_holes(mask, max_size=size)
        )
    np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))


@pytest.mark.parametrize("index", range(9))
def test_component_masks_are_the_padded_label_crops(index: int) -> None:
    mask = masks()[index]
    labels, n = ndi.label(mask, structure=EIGHT)
    pieces = list(component_masks(find_runs(mask, 2), pad=1))
    assert len(pieces) == n
    for k, (box, piece) in enumerate(pieces, start=1):
        assert box == ndi.find_objects(labels)[k - 1]
        np.testing.assert_array_equal(piece, np.pad(labels[box] == k, 1))
