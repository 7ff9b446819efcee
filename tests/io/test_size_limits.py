"""Declared sizes are checked before allocation; default resolution tags are no mpp; thumbnails
of levels without a pyramid are read by blocks."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.uid import generate_uid

from medcl.errors import ConfigError, InvalidInputError
from medcl.io import slides as slides_mod
from medcl.io.images import read_image
from medcl.io.limits import max_voxels
from medcl.io.slides import open_slide, tiff_resolution_mpp
from medcl.io.volumes import read_volume
from medcl.testing.lying_headers import write_lying_nifti, write_lying_nrrd, write_lying_tiff
from medcl.testing.volumes import write_dicom_slice


# ---------------------------------------------------------------- volumes
@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_nifti_claiming_30000_cubed_voxels_is_refused(tmp_path: Path, name: str) -> None:
    path = write_lying_nifti(tmp_path / name, (30000, 30000, 30000))
    with pytest.raises(InvalidInputError, match=r"27,000,000,000,000 voxels.*MEDCL_MAX_VOXELS"):
        read_volume(path)


@pytest.mark.parametrize("dims", [(4, -5, 4), (4, 0, 4)])
def test_nifti_with_negative_or_zero_dimension_is_refused(
    tmp_path: Path, dims: tuple[int, ...]
) -> None:
    path = write_lying_nifti(tmp_path / "bad.nii", dims)
    with pytest.raises(InvalidInputError, match=rf"dimension 1 is {dims[1]}") as info:
        read_volume(path)
    assert str(path) in str(info.value)


def test_nifti_declaring_more_bytes_than_the_file_holds(tmp_path: Path) -> None:
    path = write_lying_nifti(tmp_path / "short.nii", (1000, 1000, 100))  # 200 MB in 368 bytes
    with pytest.raises(InvalidInputError, match=r"200,000,000 bytes.*368 bytes.*truncated"):
        read_volume(path)


def test_voxel_cap_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), path)
    assert read_volume(path).shape == (8, 8, 4)
    monkeypatch.setenv("MEDCL_MAX_VOXELS", "255")
    with pytest.raises(InvalidInputError, match=r"8 x 8 x 4 = 256 voxels, more than the 255"):
        read_volume(path)
    monkeypatch.setenv("MEDCL_MAX_VOXELS", "lots")
    with pytest.raises(ConfigError, match="MEDCL_MAX_VOXELS"):
        max_voxels()


def test_one_frame_of_a_4d_nifti_counts_one_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), path)
    monkeypatch.setenv("MEDCL_MAX_VOXELS", "100")
    assert read_volume(path, frame=1).shape == (4, 4, 4)
    with pytest.raises(InvalidInputError, match="192 voxels"):
        read_volume(path)


@pytest.mark.parametrize(("sizes", "problem"), [((30000,) * 3, "voxels, more"), ((4, -3, 4), "-3")])
def test_nrrd_lying_sizes_are_refused(tmp_path: Path, sizes: tuple[int, ...], problem: str) -> None:
    path = write_lying_nrrd(tmp_path / "bad.nrrd", sizes)
    with pytest.raises(InvalidInputError, match=problem):
        read_volume(path)


def test_dicom_series_voxels_are_counted_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = generate_uid()
    for k in range(3):
        write_dicom_slice(tmp_path / f"s{k}.dcm", uid, k, np.zeros((4, 5)))
    assert read_volume(tmp_path).array.size == 60
    monkeypatch.setenv("MEDCL_MAX_VOXELS", "59")
    with pytest.raises(InvalidInputError, match=r"5 x 4 x 3 = 60 voxels"):
        read_volume(tmp_path)
    monkeypatch.setenv("MEDCL_MAX_VOXELS", "19")
    with pytest.raises(InvalidInputError, match=r"5 x 4 x 1 = 20 voxels"):
        read_volume(tmp_path / "s0.dcm")


# ---------------------------------------------------------------- 2D images
def test_image_pixel_cap_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    assert read_image(path).shape == (30, 40, 3)
    monkeypatch.setenv("MEDCL_MAX_PIXELS", "1199")
    with pytest.raises(InvalidInputError, match=r"40 x 30 = 1,200 px.*MEDCL_MAX_PIXELS"):
        read_image(path)


# ---------------------------------------------------------------- slides
@pytest.mark.parametrize("tiled", [False, True])
def test_tiny_tiff_declaring_100000_squared_px_is_refused_at_open(
    tmp_path: Path, tiled: bool
) -> None:
    path = write_lying_tiff(tmp_path / "lie.tif", 100_000, 100_000, tiled=tiled)
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match=r"100000 x 100000 px.*file of \d+ bytes"):
            open_slide(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_slide_pixel_cap_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((64, 96, 3), np.uint8), tile=(32, 32))
    assert open_slide(path, mpp=0.5).dimensions == (96, 64)
    monkeypatch.setenv("MEDCL_MAX_SLIDE_PIXELS", "6000")
    with pytest.raises(InvalidInputError, match=r"96 x 64 = 6,144 px at level 0"):
        open_slide(path, mpp=0.5)


def test_region_reads_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((64, 96, 3), np.uint8), tile=(32, 32))
    monkeypatch.setenv("MEDCL_MAX_PIXELS", "1000")
    with open_slide(path, mpp=0.5) as slide:
        assert slide.read_region((0, 0), 0, (40, 25)).shape == (25, 40, 3)
        with pytest.raises(InvalidInputError, match=r"region of 40 x 26 px.*MEDCL_MAX_PIXELS"):
            slide.read_region((0, 0), 0, (40, 26))


def _tiff_224(path: Path, **resolution: object) -> Path:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), **resolution)
    return path


@pytest.mark.parametrize(
    "resolution",
    [
        {"resolution": (72, 72), "resolutionunit": "INCH"},
        {"resolution": (96, 96), "resolutionunit": "INCH"},
        {"resolution": (72 / 2.54, 72 / 2.54), "resolutionunit": "CENTIMETER"},
        {"resolution": (72, 72), "resolutionunit": "NONE"},
        {"resolution": (300, 300), "resolutionunit": "INCH"},
        {},
    ],
)
def test_default_resolution_tag_is_no_mpp(tmp_path: Path, resolution: dict[str, object]) -> None:
    path = _tiff_224(tmp_path / "tile.tif", **resolution)
    with open_slide(path) as slide:
        assert slide.mpp is None and slide.mpp_source is None
    with open_slide(path, mpp=0.5) as slide:  # the --mpp hint applies
        assert slide.mpp == 0.5 and slide.mpp_source == "override"


def test_pil_default_72_dpi_tiff_is_no_mpp(tmp_path: Path) -> None:
    path = tmp_path / "pil.tif"
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(path, dpi=(72, 72))
    with open_slide(path) as slide:
        assert slide.properties.get("tiff.XResolution") is not None
        assert slide.mpp is None


def test_scanner_resolution_tag_is_kept(tmp_path: Path) -> None:
    path = _tiff_224(tmp_path / "scan.tif", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
    assert tiff_resolution_mpp({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "50800"}) == (
        pytest.approx(0.5)
    )
    assert tiff_resolution_mpp({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "72"}) is None


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128).astype(np.uint8)
    return np.stack([base, base[::-1], 255 - base], axis=-1)


def test_thumbnail_of_a_level_without_pyramid_is_read_by_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = _smooth_rgb(600, 1000)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib")
    monkeypatch.setattr(slides_mod, "DIRECT_READ_PIXELS", 10_000)
    reads: list[tuple[int, int]] = []
    with open_slide(path, mpp=0.5) as slide:
        original = slide._read_level_pixels  # every block read of a thumbnail

        def spy(level: int, origin: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
            reads.append(size)
            return original(level, origin, size)

        monkeypatch.setattr(slide, "_read_level_pixels", spy)
        for budget in (50_000, 700):  # full-width stripes, then blocks narrower than a row
            monkeypatch.setattr(slides_mod, "BLOCK_READ_PIXELS", budget)
            reads.clear()
            thumb = slide.thumbnail(200)
            reference = Image.fromarray(pixels).resize((200, 120), Image.Resampling.BOX)
            np.testing.assert_allclose(thumb.astype(int), np.asarray(reference), atol=1)
            assert len(reads) > 1 and max(w * h for w, h in reads) <= budget + 2 * 1000
            assert (1000, 600) not in reads


def test_large_flat_tiff_thumbnail_never_allocates_the_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = _smooth_rgb(2000, 3000)  # 18 MB as RGB
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="zlib")
    reference = np.asarray(Image.fromarray(pixels).resize((300, 200), Image.Resampling.BOX))
    del pixels
    assert slides_mod.BLOCK_READ_PIXELS <= 2**21 and slides_mod.DIRECT_READ_PIXELS <= 2**21
    # the same rule at a smaller scale: the level is 24 blocks, read one at a time
    monkeypatch.setattr(slides_mod, "DIRECT_READ_PIXELS", 2**18)
    monkeypatch.setattr(slides_mod, "BLOCK_READ_PIXELS", 2**18)
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, mpp=0.5, backend=backend) as slide:
            tracemalloc.start()
            try:
                thumb = slide.thumbnail(300)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        np.testing.assert_allclose(thumb.astype(int), reference, atol=1)
        assert peak < 18e6 / 4, f"{backend}: peak {peak / 1e6:.1f} MB"


def test_composite_on_white_rounds_like_the_float_blend() -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    expected = np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    np.testing.assert_array_equal(slides_mod._composite_on_white(rgba), expected)
