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


def test_draw_box_outline_in_thumbnail_pixels() -> None:
    thumb = np.zeros((10, 20, 3), dtype=np.uint8)
    # slide 200 x 100 -> thumbnail scale 0.1; region (50, 20, 60, 40) -> pixels x 5..10, y 2..5
    out = sv.draw_box(thumb, sv.Region(50, 20, 60, 40), (200, 100), (9, 9, 9), width=1)
    drawn = np.argwhere(out[..., 0] == 9)
    assert drawn[:, 0].min() == 2 and drawn[:, 0].max() == 5
    assert drawn[:, 1].min() == 5 and drawn[:, 1].max() == 10
    assert out[3, 7].tolist() == [0, 0, 0]  # inside the box stays untouched
    assert thumb.max() == 0  # input not modified


def test_load_heatmap_keeps_alpha_and_scores(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, [[0, 128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(sv.load_heatmap(tmp_path / "a.png"), rgba)
    scores = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    Image.fromarray(scores, "L").save(tmp_path / "s.png")
    loaded = sv.load_heatmap(tmp_path / "s.png")
    assert loaded.shape == (2, 2) and np.array_equal(loaded, scores)
    # score 255 -> weight 1 at opacity 1: the pixel takes the colormap's top colour
    out = sv.blend_heatmap(np.zeros((2, 2, 3), np.uint8), loaded, 1.0)
    assert out[0, 0].tolist() == [0, 0, 0]  # score 0: weight 0, thumbnail unchanged
    from matplotlib import colormaps

    top = (np.asarray(colormaps["inferno"](1.0)[:3]) * 255).astype(np.uint8)
    assert out[1, 1].tolist() == top.tolist()
