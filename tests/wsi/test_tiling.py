"""Tiling plans, grids and vectorised tissue fractions (medcl.wsi.tiling), coords HDF5 I/O."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from medcl.errors import InvalidInputError
from medcl.testing.slides import synthetic_tissue_image
from medcl.wsi.coords_io import CoordsAttrs, read_coords, write_coords
from medcl.wsi.tiling import (
    grid_coords,
    magnification_to_mpp,
    plan_tiling,
    tile_tissue,
    tissue_fraction,
    tissue_mask,
)

LEVELS = [1.0, 2.0, 4.0]


def loop_fraction(
    coords: np.ndarray, tile: int, mask: np.ndarray, sx: float, sy: float
) -> list[float]:
    """Plain reference: the mean of each clipped window."""
    out = []
    for x, y in coords:
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        window = mask[y0 : y0 + max(1, round(tile * sy)), x0 : x0 + max(1, round(tile * sx))]
        out.append(float(window.mean()) if window.size else 0.0)
    return out


def test_magnification_mapping() -> None:
    assert magnification_to_mpp(20) == 0.5
    assert magnification_to_mpp(40) == 0.25
    with pytest.raises(ValueError, match="magnification must be positive"):
        magnification_to_mpp(0)


@pytest.mark.parametrize(
    "mpp,target,overlap,expected",
    [
        # (level, read_size, patch_size_level0, stride_level0), hand-computed
        (0.5, 0.5, 0, (0, 256, 256, 256)),  # level 0 is the target
        (0.25, 1.0, 0, (2, 256, 1024, 1024)),  # level 2 (downsample 4) is the target
        (0.25, 0.75, 0, (1, 384, 768, 768)),  # level 1 (ds 2) read 1.5x larger, shrunk
        (0.25, 0.75, 32, (1, 384, 768, 672)),  # stride (256 - 32) * 3
        (0.499, 0.5, 0, (0, 256, 256, 256)),  # within 5%: read level 0 as is
        (0.26, 0.5, 0, (1, 256, 512, 512)),  # level 1 is 0.52 um/px, within 5%
        (0.5, 0.25, 0, (0, 128, 128, 128)),  # finer than level 0: enlarged
    ],
)
def test_plan_levels_and_sizes(
    mpp: float, target: float, overlap: int, expected: tuple[int, int, int, int]
) -> None:
    plan = plan_tiling(
        (4000, 3000), LEVELS, mpp, target_mpp=target, patch_size=256, overlap=overlap
    )
    assert (plan.level, plan.read_size, plan.patch_size_level0, plan.stride_level0) == expected
    attrs = plan.as_attrs()
    assert attrs["patch_level"] == expected[0] and attrs["overlap"] == overlap
    assert attrs["level0_width"] == 4000 and attrs["mpp"] == mpp


def test_plan_tolerates_float_downsamples() -> None:
    plan = plan_tiling((4000, 3000), [1.0, 2.0005, 4.0011], 0.25, target_mpp=1.0, patch_size=224)
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (2, 224, 896)


def test_plan_rejects_bad_overlap() -> None:
    with pytest.raises(ValueError, match=r"overlap must be in \[0, patch_size\)"):
        plan_tiling((100, 100), [1.0], 0.5, target_mpp=0.5, patch_size=64, overlap=64)


def test_grid_exact_at_level0() -> None:
    plan = plan_tiling((1000, 800), LEVELS, 0.5, target_mpp=0.5, patch_size=256)
    coords, fraction = tile_tissue(plan, np.ones((80, 100), bool), min_tissue=0.5)
    expected = [[x, y] for y in (0, 256, 512) for x in (0, 256, 512)]
    assert coords.dtype == np.int64 and coords.tolist() == expected
    np.testing.assert_array_equal(fraction, np.ones(9, np.float32))


def test_grid_exact_at_a_lower_level() -> None:
    plan = plan_tiling((5000, 3000), LEVELS, 0.25, target_mpp=1.0, patch_size=256)
    coords, _ = tile_tissue(plan, np.ones((30, 50), bool), min_tissue=0.5)
    assert coords.tolist() == [[x, y] for y in (0, 1024) for x in (0, 1024, 2048, 3072)]


def test_overlap_stride() -> None:
    plan = plan_tiling((1000, 800), LEVELS, 0.5, target_mpp=0.5, patch_size=256, overlap=56)
    coords, _ = tile_tissue(plan, np.ones((80, 100), bool), min_tissue=0.0)
    assert coords.tolist() == [[x, y] for y in (0, 200, 400) for x in (0, 200, 400, 600)]


def test_tissue_threshold_keeps_only_tissue_tiles() -> None:
    mask = np.zeros((80, 100), bool)
    mask[:, :38] = True  # level-0 x < 380 (scale 0.1)
    plan = plan_tiling((1000, 800), LEVELS, 0.5, target_mpp=0.5, patch_size=256)
    coords, fraction = tile_tissue(plan, mask, min_tissue=0.4)
    # x = 0 fully tissue; x = 256 covers mask columns 25..50: 13 of 26 -> 0.5
    assert coords.tolist() == [[x, y] for y in (0, 256, 512) for x in (0, 256)]
    np.testing.assert_allclose(fraction, [1.0, 0.5] * 3)
    coords, _ = tile_tissue(plan, mask, min_tissue=0.6)
    assert coords[:, 0].tolist() == [0, 0, 0]


def test_vectorised_fraction_equals_loop() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((97, 131)) > 0.6
    coords = np.concatenate([rng.integers(0, 6000, (300, 2)), [[5900, 4300], [0, 0]]])
    sx, sy = 131 / 6000, 97 / 4400
    got = tissue_fraction(coords, 300, mask, (sx, sy))
    np.testing.assert_allclose(got, loop_fraction(coords, 300, mask, sx, sy), atol=1e-12)
    same = tissue_fraction(coords, 300, mask, 0.02)  # one scale for both axes
    np.testing.assert_allclose(same, loop_fraction(coords, 300, mask, 0.02, 0.02), atol=1e-12)
    # a few windows are counted directly (no integral image): the same fractions
    few = np.concatenate([coords[:5], coords[-2:]])
    np.testing.assert_allclose(
        tissue_fraction(few, 300, mask, (sx, sy)), got[[0, 1, 2, 3, 4, -2, -1]]
    )


def test_legacy_helpers_still_work() -> None:
    image, truth = synthetic_tissue_image(120, 160, seed=4, n_blobs=3)
    mask = tissue_mask(image)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    assert grid_coords((10, 6), 4).tolist() == [[0, 0], [4, 0]]


# --------------------------------------------------------------------------- coords HDF5
def test_coords_round_trip(tmp_path: Path) -> None:
    plan = plan_tiling((5000, 3000), LEVELS, 0.25, target_mpp=0.75, patch_size=256)
    coords = np.array([[0, 0], [768, 1536]])
    attrs = CoordsAttrs(**plan.as_attrs(), slide="a.svs")
    path = write_coords(tmp_path / "p" / "a.h5", coords, attrs, np.array([0.5, 1.0]))
    assert not (tmp_path / "p" / "a.h5.tmp").exists()
    grid = read_coords(path)
    assert grid.coords.tolist() == coords.tolist() and grid.coords.dtype == np.int64
    assert grid.attrs == attrs
    assert grid.tissue_fraction is not None
    np.testing.assert_allclose(grid.tissue_fraction, np.array([0.5, 1.0]))
    with h5py.File(path) as f:
        raw = dict(f["coords"].attrs)
        assert f["tissue_fraction"].dtype == np.float32
    assert raw["patch_size"] == 256 and raw["read_size"] == 384 and raw["patch_level"] == 1
    assert raw["patch_size_level0"] == 768 and raw["target_mpp"] == 0.75


def test_empty_coords_file(tmp_path: Path) -> None:
    path = write_coords(tmp_path / "e.h5", np.zeros((0, 2)), CoordsAttrs(patch_size=256))
    grid = read_coords(path)
    assert grid.coords.shape == (0, 2) and len(grid) == 0


def test_reads_clam_and_trident_files(tmp_path: Path) -> None:
    clam = tmp_path / "clam.h5"
    with h5py.File(clam, "w") as f:
        ds = f.create_dataset("coords", data=np.array([[0, 0], [1024, 0]]))
        ds.attrs.update({"patch_level": 1, "patch_size": 512, "downsample": [2.0, 2.0]})
        ds.attrs["name"] = "slide_a"
    grid = read_coords(clam)
    a = grid.attrs
    assert (a.patch_level, a.patch_size, a.patch_size_level0, a.read_size) == (1, 512, 1024, 512)
    assert a.slide == "slide_a" and grid.tissue_fraction is None
    trident = tmp_path / "trident.h5"
    with h5py.File(trident, "w") as f:
        ds = f.create_dataset("coords", data=np.array([[0, 0]]))
        ds.attrs.update({"patch_size": 256, "patch_size_level0": 512, "overlap": 0})
        ds.attrs.update({"target_magnification": 20, "level0_magnification": 40})
    a = read_coords(trident).attrs
    assert (a.patch_level, a.read_size, a.target_mpp, a.mpp) == (0, 512, 0.5, 0.25)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.create_dataset("coords", data=np.array([[5, 6]]))
    a = read_coords(bare).attrs
    assert (a.patch_level, a.patch_size, a.read_size) == (0, None, None)


def test_bad_coords_files(tmp_path: Path) -> None:
    text = tmp_path / "x.h5"
    text.write_text("not hdf5")
    with pytest.raises(InvalidInputError, match=r"x\.h5: not a readable HDF5 file"):
        read_coords(text)
    other = tmp_path / "y.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("features", data=np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match="no 'coords' dataset"):
        read_coords(other)
    wrong = tmp_path / "z.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("coords", data=np.zeros((4, 3)))
    with pytest.raises(InvalidInputError, match=r"'coords' must be \(N, 2\), got \(4, 3\)"):
        read_coords(wrong)
