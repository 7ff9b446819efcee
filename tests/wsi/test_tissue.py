"""Tissue detection, outline polygons and QuPath GeoJSON (medcl.wsi.tissue)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hsv

from medcl.io.slides import open_slide
from medcl.testing.slides import BACKGROUND, SyntheticTissue, write_pyramidal_tiff
from medcl.wsi.tissue import (
    PEN_COLORS,
    TissuePolygon,
    contours_to_geojson,
    detect_tissue,
    mask_to_polygons,
    pen_mask,
    polygons_to_mask,
    read_geojson_polygons,
    rgb_to_hsv,
    signed_area,
    simplify_polyline,
    write_geojson,
)

PINK = (225, 140, 190)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def disc_image(h: int = 120, w: int = 160, radius: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A pink disc on background, and its mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    image[mask] = PINK
    return image, mask


def test_rgb_to_hsv_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    rgb[0, :6] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    ours, ref = rgb_to_hsv(rgb), rgb2hsv(rgb)
    diff = np.abs(ours - ref)
    diff[..., 0] = np.minimum(diff[..., 0], 1 - diff[..., 0])  # hue is an angle
    assert diff.max() <= 1 / 255 + 1e-6


def test_mask_of_a_synthetic_slide_matches_the_known_tissue(tmp_path: Path) -> None:
    truth = SyntheticTissue(768, 1024, seed=5, n_blobs=5)
    path = write_pyramidal_tiff(
        tmp_path / "s.tif", truth(0, 0, 768, 1024), levels=3, compression="zlib"
    )
    with open_slide(path) as slide:
        thumb = slide.thumbnail(256)  # level 2 (256 x 192) read as is
    known = truth.mask(0, 0, 192, 256, step=4)
    result = detect_tissue(thumb)
    assert thumb.shape[:2] == known.shape
    assert 0.1 < known.mean() < 0.9
    assert iou(result.mask, known) > 0.9


def test_blank_thumbnail_has_no_tissue() -> None:
    blank = np.full((50, 60, 3), BACKGROUND, np.uint8)
    result = detect_tissue(blank)
    assert not result.mask.any() and result.contours == []


@pytest.mark.parametrize(
    "color,ink",
    [
        ("blue", (40, 70, 200)),
        ("green", (40, 160, 90)),
        ("black", (40, 40, 48)),
        ("red", (210, 30, 40)),
    ],
)
def test_pen_marks_are_removed(color: str, ink: tuple[int, int, int]) -> None:
    image, mask = disc_image()
    image[5:15, 10:150] = ink  # a stroke on the glass above the tissue
    image[60:64, 40:120] = ink  # and one across the tissue
    kept = detect_tissue(image, pen_colors=(), saturation_threshold=0.1)
    assert kept.mask[6:14, 11:149].all()  # without the rule the ink is "tissue"
    removed = detect_tissue(image, pen_colors=[color], saturation_threshold=0.1)
    assert not removed.mask[5:15, 10:150].any()
    assert not removed.mask[60:64, 40:120].any()
    expected = mask.copy()
    expected[58:66, 38:122] = False  # the stroke dilated by pen_dilation=2
    assert iou(removed.mask, expected) > 0.95


def test_small_pen_like_pieces_are_kept_with_min_pen_area() -> None:
    image, _ = disc_image()
    image[58:61, 78:81] = (200, 40, 50)  # a red blood cell inside the tissue: 9 px
    assert not detect_tissue(image, close_radius=0).mask[59, 79]
    assert detect_tissue(image, close_radius=0, min_pen_area=50).mask[59, 79]


def test_near_black_border_is_background() -> None:
    image, mask = disc_image()
    image[:, :6] = (30, 10, 20)  # dark but saturated scanner border
    assert detect_tissue(image, black_value=0.0, pen_colors=()).mask[1:-1, :5].all()
    result = detect_tissue(image)
    assert not result.mask[:, :6].any() and iou(result.mask, mask) > 0.95


def test_small_holes_are_filled_and_large_ones_kept() -> None:
    image, _ = disc_image(radius=50)
    image[55:60, 75:80] = BACKGROUND  # 25 px hole
    image[40:60, 50:70] = BACKGROUND  # 400 px hole
    result = detect_tissue(image, min_hole_area=100, close_radius=0)
    assert result.mask[57, 77]
    assert not result.mask[45:55, 55:65].any()
    (piece,) = result.contours
    assert len(piece.holes) == 1
    # in square microns at 2 um per thumbnail pixel: 400 um2 = 100 px, the same result
    in_um = detect_tissue(image, min_hole_area=400, area_unit="um2", mpp=2.0, close_radius=0)
    np.testing.assert_array_equal(in_um.mask, result.mask)
    with pytest.raises(ValueError, match="min_hole_area in um2 needs the thumbnail's mpp"):
        detect_tissue(image, min_hole_area=400, area_unit="um2")


def test_min_tissue_area_drops_specks() -> None:
    image, mask = disc_image()
    for y, x in ((10, 10), (100, 140), (10, 140)):
        image[y : y + 6, x : x + 6] = PINK  # 36 px specks
    assert detect_tissue(image).mask[12, 12]
    result = detect_tissue(image, min_tissue_area=100)
    np.testing.assert_array_equal(result.mask, mask)
    assert len(result.contours) == 1


def test_rectangle_outline_is_exact() -> None:
    mask = np.zeros((30, 50), bool)
    mask[10:20, 20:40] = True
    (piece,) = mask_to_polygons(mask, tolerance=0)
    ring = piece.exterior
    assert np.array_equal(ring[0], ring[-1])
    assert ring[:, 0].min() == 20 and ring[:, 0].max() == 40
    assert ring[:, 1].min() == 10 and ring[:, 1].max() == 20
    # marching squares cuts each corner by a right triangle of legs 0.5
    assert signed_area(ring) == pytest.approx(200 - 4 * 0.125)
    np.testing.assert_array_equal(polygons_to_mask([piece], mask.shape), mask)


def test_ring_with_hole_orientation_and_raster() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    mask[15:25, 15:25] = False
    (piece,) = mask_to_polygons(mask)
    (hole,) = piece.holes
    assert signed_area(piece.exterior) > 0 > signed_area(hole)
    np.testing.assert_array_equal(polygons_to_mask([piece], mask.shape), mask)


def test_geojson_round_trip_in_level0_pixels(tmp_path: Path) -> None:
    image, _ = disc_image(radius=50)
    image[40:60, 50:70] = BACKGROUND
    result = detect_tissue(image)
    geo = contours_to_geojson(result.contours, scale=4.0)
    (feature,) = geo["features"]
    assert geo["type"] == "FeatureCollection"
    assert feature["geometry"]["type"] == "Polygon"
    assert len(feature["geometry"]["coordinates"]) == 2  # exterior + one hole
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tissue"
    path = write_geojson(tmp_path / "c.geojson", geo)
    (back,) = read_geojson_polygons(path)
    np.testing.assert_allclose(back.exterior, result.contours[0].exterior * 4, atol=0.01)
    assert back.exterior.max() > 200  # level-0 px, not thumbnail px
    raster = polygons_to_mask([back], result.mask.shape, scale=4.0)
    assert iou(raster, result.mask) > 0.99


def test_reads_qupath_multipolygon_export(tmp_path: Path) -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    far = [[[20, 20], [30, 20], [30, 30], [20, 20]]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [[square], far]},
        "properties": {"objectType": "annotation"},
    }
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps([feature]))
    polys = read_geojson_polygons(path)
    assert [len(p.exterior) for p in polys] == [5, 4]
    assert isinstance(polys[0], TissuePolygon) and polys[0].holes == ()


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.5])
def test_simplification_matches_skimage_approximate_polygon(tolerance: float) -> None:
    from skimage.measure import approximate_polygon, find_contours

    rng = np.random.default_rng(3)
    rings = []
    for seed in range(4):  # outlines of synthetic tissue, as the tiling job makes them
        mask = SyntheticTissue(300, 400, seed=seed, n_blobs=6).mask(0, 0, 300, 400)
        rings += find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="high")
    blob = rng.random((60, 80)) > 0.45  # ragged noise: many ties and points at the tolerance
    rings += find_contours(np.pad(blob, 1).astype(np.float32), 0.5)
    walk = np.cumsum(rng.normal(size=(500, 2)), axis=0)  # an open line of arbitrary floats
    rings.append(walk)
    assert len(rings) > 20
    for ring in rings:
        np.testing.assert_array_equal(
            simplify_polyline(ring, tolerance), approximate_polygon(ring, tolerance)
        )
    assert len(simplify_polyline(walk, tolerance)) < len(walk)
    np.testing.assert_array_equal(simplify_polyline(walk, 0.0), walk)


def test_contours_of_detected_tissue_need_no_scipy_signal() -> None:
    code = (
        "import sys\n"
        "from medcl.testing.slides import synthetic_tissue_image\n"
        "from medcl.wsi.tissue import detect_tissue\n"
        "image, _ = synthetic_tissue_image(200, 300, seed=1)\n"
        "assert detect_tissue(image, contour_tolerance=1.0).contours\n"
        "heavy = sorted(m for m in ('scipy.signal', 'scipy.stats', 'torch') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", out.stdout


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_level_tables_give_the_float_rules(seed: int) -> None:
    from skimage.filters import threshold_otsu

    from medcl.wsi.hsv_rules import hsv_levels, otsu_of_levels, pen_mask_levels

    rng = np.random.default_rng(seed)
    image, _ = SyntheticTissue(120, 160, seed=seed)(0, 0, 120, 160), None
    noise = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image = np.where(rng.random((120, 160, 1)) < 0.3, noise, image).astype(np.uint8)
    hsv8 = hsv_levels(image)
    hsv = rgb_to_hsv(image)
    np.testing.assert_array_equal(hsv8 / np.float32(255.0), hsv)
    for colors in (PEN_COLORS, ("red",), ("black", "green")):
        np.testing.assert_array_equal(pen_mask_levels(hsv8, colors), pen_mask(hsv, colors))
    sat = hsv[..., 1]
    keep = rng.random(sat.shape) < 0.8
    counts = np.bincount(hsv8[..., 1][keep], minlength=256)
    assert otsu_of_levels(counts) == pytest.approx(float(threshold_otsu(sat[keep])), abs=0)
