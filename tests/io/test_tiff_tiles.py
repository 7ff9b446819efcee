"""Direct tile reads of plain tiled TIFF levels: the same pixels as openslide, a bounded cache,
and a fall-back to openslide (which names the damage) for anything they cannot decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from medcl.errors import InvalidInputError
from medcl.io.slides import open_slide
from medcl.io.tiff_tiles import TiffLevelTiles, plain_tiff_levels
from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

pytest.importorskip("openslide")


@pytest.fixture(scope="module", params=["jpeg", "zlib"])
def slide_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _ = synthetic_tissue_image(600, 808, seed=3)  # not a multiple of the tile size
    path = tmp_path_factory.mktemp("tiles") / f"s_{request.param}.tif"
    return write_pyramidal_tiff(path, image, levels=2, tile=128, compression=request.param)


def _regions(width: int, height: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    out = [(0, 0, 224, 224), (width - 100, height - 50, 224, 224), (width + 5, 0, 32, 32)]
    for _ in range(40):
        out.append(
            (
                int(rng.integers(0, width)),
                int(rng.integers(0, height)),
                int(rng.integers(1, 400)),
                int(rng.integers(1, 400)),
            )
        )
    return out


def test_direct_reads_equal_openslide_at_every_level(slide_file: Path) -> None:
    direct = open_slide(slide_file, backend="openslide")
    reference = open_slide(slide_file, backend="openslide", direct_tiles=False)
    width, height = direct.dimensions
    for x, y, w, h in _regions(width, height, seed=0):
        ours = direct.read_region((x, y), 0, (w, h))
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, reference.read_region((x, y), 0, (w, h)))
    for x, y, w, h in _regions(width // 2, height // 2, seed=1):  # level 1: downsample 2
        loc = (2 * x, 2 * y)
        np.testing.assert_array_equal(
            direct.read_region(loc, 1, (w, h)), reference.read_region(loc, 1, (w, h))
        )
    # both levels went the direct way, none through openslide's painting
    assert direct.direct_levels == [0, 1] and reference.direct_levels == []
    # outside the image: white, as openslide's transparent pixels are shown
    assert (direct.read_region((width + 5, height + 5), 0, (16, 16)) == 255).all()


def test_only_plain_tiff_vendors_and_covered_layouts(slide_file: Path, tmp_path: Path) -> None:
    dims = [(808, 600), (404, 300)]
    assert sorted(plain_tiff_levels(slide_file, "generic-tiff", dims)) == [0, 1]
    assert plain_tiff_levels(slide_file, "ventana", dims) == {}  # overlapping tiles: openslide
    assert plain_tiff_levels(slide_file, "generic-tiff", [(999, 999)]) == {}
    not_tiff = tmp_path / "x.tif"
    not_tiff.write_bytes(b"not a tiff at all")
    assert plain_tiff_levels(not_tiff, "generic-tiff", dims) == {}
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((64, 64), np.uint8), tile=(16, 16))
    with tifffile.TiffFile(gray) as tif:
        assert not TiffLevelTiles.usable(tif.pages[0])  # one sample: not covered


def test_tile_cache_is_bounded(slide_file: Path) -> None:
    with tifffile.TiffFile(slide_file) as tif:
        reader = TiffLevelTiles(slide_file, tif.pages[0], cache_bytes=3 * 128 * 128 * 3)
    whole = reader.read(0, 0, 808, 600)  # a large read decodes straight through
    assert whole.shape == (600, 808, 3) and len(reader._cache) == 0
    for y in range(0, 501, 100):  # tile-sized reads: 7 x 5 tiles pass through a cache of 3
        for x in range(0, 701, 100):
            np.testing.assert_array_equal(
                reader.read(x, y, 100, 100), whole[y : y + 100, x : x + 100]
            )
    assert len(reader._cache) == 3
    reader.close()


def test_a_damaged_tile_falls_back_to_openslide_which_names_the_file(tmp_path: Path) -> None:
    image, _ = synthetic_tissue_image(256, 256, seed=1)
    path = write_pyramidal_tiff(tmp_path / "bad.tif", image, levels=1, tile=128)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + count] = b"\x00" * (count - 2)  # keep the SOI marker, lose the rest
    path.write_bytes(bytes(raw))
    slide = open_slide(path, backend="openslide")
    np.testing.assert_array_equal(  # an intact tile still reads
        slide.read_region((0, 0), 0, (64, 64)),
        open_slide(path, direct_tiles=False).read_region((0, 0), 0, (64, 64)),
    )
    with pytest.raises(InvalidInputError, match=r"bad\.tif"):
        slide.read_region((128, 128), 0, (64, 64))
    assert slide.direct_levels == []  # off for this slide after the failure


def test_block_thumbnail_reads_exact_level_pixels_at_a_fractional_downsample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Level 1 of an odd-sized slide has downsample 1203 / 601 = 2.0017: a stripe starting
    at level row r lies at level-0 row 2.0017 r, which openslide would resample. The block
    thumbnail must equal the whole level shrunk at once (up to rounding)."""
    from PIL import Image

    import medcl.io.slides as slides

    image, _ = synthetic_tissue_image(1001, 1203, seed=5)
    path = write_pyramidal_tiff(tmp_path / "odd.tif", image, levels=2, tile=128)
    slide = open_slide(path, backend="openslide")
    (lw, lh), ds = slide.level_dimensions[1], slide.level_downsamples[1]
    assert ds != int(ds) and slide.direct_levels == [0, 1]
    level = slide.read_region((0, 0), 1, (lw, lh))
    target = (150, round(150 * lh / lw))
    reference = np.asarray(Image.fromarray(level).resize(target, Image.Resampling.BOX))
    monkeypatch.setattr(slides, "DIRECT_READ_PIXELS", 1000)
    monkeypatch.setattr(slides, "BLOCK_READ_PIXELS", 40_000)  # stripes of ~66 level rows
    thumb = slide._shrink_by_blocks(1, target)
    assert thumb.shape == reference.shape
    assert np.abs(thumb.astype(int) - reference).max() <= 1
