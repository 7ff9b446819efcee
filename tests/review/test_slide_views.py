"""Slide viewer rendering: heatmap blending, zoom clamping and full-resolution reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcl.review import slide_views as sv
from medcl.testing.slides import write_pyramidal_tiff


def test_blend_heatmap_rgba_weight_and_opacity() -> None:
    thumb = np.full((2, 2, 3), 100, dtype=np.uint8)
    heat = np.zeros((2, 2, 4), dtype=np.uint8)
    heat[0, 0] = (200, 0, 0, 255)
    heat[1, 1] = (0, 200, 0, 0)  # transparent: no effect
    out = sv.blend_heatmap(thumb, heat, 0.5)
    assert out[0, 0].tolist() == [150, 50, 50]
    assert out[1, 1].tolist() == [100, 100, 100]
    assert np.array_equal(sv.blend_heatmap(thumb, heat, 0.0), thumb)
    grey = sv.blend_heatmap(thumb, np.zeros((1, 1), np.uint8), 1.0)  # score 0: weight 0
    assert np.array_equal(grey, thumb)


def test_clamp_region() -> None:
    assert sv.clamp_region(10, 20, 100, (1000, 800)) == sv.Region(10, 20, 100, 100)
    assert sv.clamp_region(950, -5, 100, (1000, 800)) == sv.Region(900, 0, 100, 100)
    assert sv.clamp_region(0, 0, 5000, (300, 200)) == sv.Region(0, 0, 300, 200)
    assert sv.clamp_region(0, 0, 10**6, (10**5, 10**5)).width == sv.MAX_ZOOM
    with pytest.raises(ValueError, match="zoom size must be positive, got 0"):
        sv.clamp_region(0, 0, 0, (10, 10))
    assert sv.thumbnail_to_level0((50, 25), (100, 50), (1000, 500)) == (500, 250)


def test_read_zoom_full_resolution_and_clamped(tmp_path: Path) -> None:
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    image[:, :, 0] = np.arange(96)[None, :] * 2  # red encodes x
    image[:, :, 1] = np.arange(64)[:, None] * 3  # green encodes y
    path = write_pyramidal_tiff(tmp_path / "s.tif", image, levels=2, tile=32, compression=None)
    pixels, region = sv.read_zoom(path, 90, 60, 16)
    assert region == sv.Region(80, 48, 16, 16)
    assert pixels.shape == (16, 16, 3)
    assert np.array_equal(pixels, image[48:64, 80:96])
    thumb, dims = sv.slide_thumbnail(path, 48)
    assert dims == (96, 64) and thumb.shape == (32, 48, 3)


def test_draw_box_double_outline_in_thumbnail_pixels() -> None:
    thumb = np.full((40, 80, 3), 128, dtype=np.uint8)
    # slide 800 x 400 -> thumbnail scale 0.1; region (200, 100, 300, 150) -> x 20..49, y 10..24
    out = sv.draw_box(thumb, sv.Region(200, 100, 300, 150), (800, 400), width=2)
    white = np.argwhere((out == 255).all(axis=2))
    assert (white[:, 0].min(), white[:, 0].max()) == (10, 24)
    assert (white[:, 1].min(), white[:, 1].max()) == (20, 49)
    black = np.argwhere((out == 0).all(axis=2))  # the outer band, just outside the white one
    assert (black[:, 0].min(), black[:, 0].max()) == (8, 26)
    assert (black[:, 1].min(), black[:, 1].max()) == (18, 51)
    assert out[11, 21].tolist() == [255, 255, 255] and out[9, 19].tolist() == [0, 0, 0]
    assert out[17, 35].tolist() == [128, 128, 128]  # inside the box stays untouched
    assert (thumb == 128).all()  # input not modified


def test_small_zoom_still_gets_a_visible_box() -> None:
    # a 256 px zoom on a 100,000 px slide is 2 thumbnail pixels: widened to MIN_BOX around it
    box = sv.box_on_thumbnail(sv.Region(50_000, 0, 256, 256), (1000, 500), (100_000, 50_000))
    x0, y0, x1, y1 = box
    assert x1 - x0 + 1 == sv.MIN_BOX and y1 - y0 + 1 == sv.MIN_BOX
    assert x0 <= 500 <= x1 and y0 == 0  # centred on the region, kept inside the thumbnail


def test_zoom_at_click_centres_the_region() -> None:
    # thumbnail shown 500 x 250 px for a 10,000 x 5,000 slide: click (250, 100) -> (5000, 2000)
    assert sv.zoom_at((250, 100), (500, 250), (10_000, 5_000), 512) == sv.Region(
        4744, 1744, 512, 512
    )
    # near the corner the region is moved back inside the slide
    assert sv.zoom_at((1, 1), (500, 250), (10_000, 5_000), 512) == sv.Region(0, 0, 512, 512)
    with pytest.raises(ValueError, match="shown size must be positive"):
        sv.zoom_at((1, 1), (0, 250), (10_000, 5_000), 512)


def test_colorbar_image_runs_viridis_low_to_high() -> None:
    from matplotlib import colormaps

    bar = sv.colorbar_image(width=64, height=5)
    assert bar.shape == (5, 64, 3) and bar.dtype == np.uint8
    viridis = colormaps["viridis"]
    assert bar[0, 0].tolist() == (np.round(np.asarray(viridis(0.0)[:3]) * 255)).tolist()
    assert bar[4, 63].tolist() == (np.round(np.asarray(viridis(1.0)[:3]) * 255)).tolist()
    # perceptually uniform: lightness (here the green channel of viridis) rises left to right
    assert np.all(np.diff(bar[0, :, 1].astype(int)) >= 0)
    with pytest.raises(ValueError, match="colour bar needs width >= 2"):
        sv.colorbar_image(width=1)


def test_top_tile_names_and_their_zoom(tmp_path: Path) -> None:
    from medcl.mil.top_tiles import tile_file_name

    name = tile_file_name("top", 1, 0.9731, 1024, 512)
    assert sv.parse_tile_name(name) == sv.TopTile(1, 0.9731, 1024, 512)
    assert sv.parse_tile_name("bottom_01_score0.1000_x1_y2.png") is None
    assert sv.parse_tile_name("tile_0.png") is None
    tile = sv.TopTile(2, 0.5, 900, 100)
    assert sv.tile_region(tile, 128, 512, (1000, 800)) == sv.Region(872, 100, 128, 128)
    assert sv.tile_region(tile, None, 64, (1000, 800)) == sv.Region(900, 100, 64, 64)
    import h5py

    with h5py.File(tmp_path / "scores.h5", "w") as f:
        ds = f.create_dataset("coords", data=np.zeros((1, 2), np.int64))
        ds.attrs["patch_size_level0"] = 127.6
    assert sv.tile_side(tmp_path / "scores.h5") == 128
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    assert sv.tile_side(tmp_path / "empty.h5") is None
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(sv.InvalidInputError, match="cannot read tile scores"):
        sv.tile_side(tmp_path / "bad.h5")


def test_load_heatmap_keeps_alpha_and_scores(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, [[0, 128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(sv.load_heatmap(tmp_path / "a.png"), rgba)
    scores = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    Image.fromarray(scores, "L").save(tmp_path / "s.png")
    loaded = sv.load_heatmap(tmp_path / "s.png")
    assert loaded.shape == (2, 2) and np.array_equal(loaded, scores)
    # score 255 -> weight 1 at opacity 1: the pixel takes viridis's top colour
    out = sv.blend_heatmap(np.zeros((2, 2, 3), np.uint8), loaded, 1.0)
    assert out[0, 0].tolist() == [0, 0, 0]  # score 0: weight 0, thumbnail unchanged
    from matplotlib import colormaps

    top = (np.asarray(colormaps["viridis"](1.0)[:3]) * 255).astype(np.uint8)
    assert out[1, 1].tolist() == top.tolist()
