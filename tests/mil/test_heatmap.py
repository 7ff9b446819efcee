"""Heatmap rendering, QuPath GeoJSON and top tiles against hand-computed cases."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.mil.geojson import tiles_to_geojson, write_geojson
from medcl.mil.heatmap import (
    blend_heatmap,
    colorbar_ticks,
    heatmap_rgba,
    normalise_scores,
    save_colorbar_png,
    save_heatmap_png,
    score_label,
    tile_score_map,
)
from medcl.mil.top_tiles import rank_tiles, save_top_tiles

VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)  # viridis(0), viridis(1) in 8 bits


def test_two_by_two_grid_fills_quadrants() -> None:
    # 200x200 slide, tiles of 100 px, 10x10 thumbnail: each tile is one 5x5 quadrant
    coords = np.array([[0, 0], [100, 0], [0, 100], [100, 100]])
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    m = tile_score_map(coords, scores, 100, (200, 200), (10, 10))
    expected = np.empty((10, 10))
    expected[:5, :5], expected[:5, 5:], expected[5:, :5], expected[5:, 5:] = 0.1, 0.2, 0.3, 0.4
    np.testing.assert_allclose(m, expected)


def test_non_square_thumbnail_scales_each_axis() -> None:
    # slide 400 wide x 200 high, thumbnail 4 x 8 (h, w): one tile of 100 at (100, 100)
    m = tile_score_map(np.array([[100, 100]]), np.array([0.7]), 100, (400, 200), (4, 8))
    expected = np.full((4, 8), np.nan)
    expected[2:4, 2:4] = 0.7
    np.testing.assert_allclose(m, expected)


def test_overlapping_tiles_average_and_nan_outside() -> None:
    # tiles of 60 at x=0 and x=40 on a 100x100 slide, 10x10 map: columns 0-3 only tile A,
    # 4-5 both, 6-9 only B; rows 0-5 covered, rows 6-9 no tile
    coords = np.array([[0, 0], [40, 0]])
    m = tile_score_map(coords, np.array([1.0, 0.0]), 60, (100, 100), (10, 10))
    np.testing.assert_allclose(m[:6, :4], 1.0)
    np.testing.assert_allclose(m[:6, 4:6], 0.5)
    np.testing.assert_allclose(m[:6, 6:], 0.0)
    assert np.isnan(m[6:]).all()


def test_nan_scores_and_tiny_tiles() -> None:
    # a NaN score paints nothing; a tile smaller than a map pixel still paints one pixel
    coords = np.array([[0, 0], [95, 95]])
    m = tile_score_map(coords, np.array([np.nan, 0.25]), 2, (100, 100), (10, 10))
    assert np.isnan(m[0, 0]) and m[9, 9] == 0.25 and np.isfinite(m).sum() == 1
    # a tile starting outside the slide is dropped
    out = tile_score_map(np.array([[100, 0]]), np.array([1.0]), 10, (100, 100), (10, 10))
    assert np.isnan(out).all()
    with pytest.raises(ValueError, match="coords has 2 tiles but scores has 1"):
        tile_score_map(coords, np.array([1.0]), 2, (100, 100), (10, 10))


def test_normalise_scores() -> None:
    s = np.array([0.3, 0.1, np.nan, 0.3, 0.9])
    np.testing.assert_allclose(normalise_scores(s, "rank"), [0.5, 0.0, np.nan, 0.5, 1.0])
    np.testing.assert_allclose(normalise_scores(s, "minmax"), [0.25, 0.0, np.nan, 0.25, 1.0])
    np.testing.assert_allclose(normalise_scores(s, "none"), s)
    np.testing.assert_allclose(normalise_scores(np.array([2.0, 2.0]), "minmax"), [0.5, 0.5])
    np.testing.assert_allclose(normalise_scores(np.array([7.0]), "rank"), [0.5])
    with pytest.raises(ValueError, match="unknown normalisation 'z'; choose one of rank, minmax"):
        normalise_scores(s, "z")


def test_blend_keeps_pixels_outside_tiles() -> None:
    thumb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    score = np.full((4, 4), np.nan)
    score[0, 0], score[1, 1] = 0.0, 1.0
    out = blend_heatmap(thumb, score, alpha=0.5, cmap="gray")
    mask = np.isnan(score)
    np.testing.assert_array_equal(out[mask], thumb[mask])
    # gray: 0 -> black, 1 -> white
    np.testing.assert_array_equal(out[0, 0], np.rint(0.5 * thumb[0, 0]).astype(np.uint8))
    np.testing.assert_array_equal(out[1, 1], np.rint(0.5 * thumb[1, 1] + 127.5).astype(np.uint8))
    np.testing.assert_array_equal(blend_heatmap(thumb, score, alpha=0.0), thumb)
    with pytest.raises(ValueError, match="score map \\(3, 3\\) does not match thumbnail"):
        blend_heatmap(thumb, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        blend_heatmap(thumb, score, cmap="nope")


def test_heatmap_rgba_is_opaque_on_tiles_only() -> None:
    scores = np.array([[0.0, 1.0], [np.nan, 0.5]])
    layer = heatmap_rgba(scores, "gray")
    assert layer.shape == (2, 2, 4) and layer.dtype == np.uint8
    assert layer[..., 3].tolist() == [[255, 255], [0, 255]]
    assert layer[0, 0, :3].tolist() == [0, 0, 0] and layer[0, 1, :3].tolist() == [255, 255, 255]
    assert abs(int(layer[1, 1, 0]) - 128) <= 1 and layer[1, 0].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="vmax > vmin"):
        heatmap_rgba(scores, vmin=1.0, vmax=1.0)


def test_default_colour_map_is_perceptually_uniform_viridis() -> None:
    thumb = np.zeros((1, 2, 3), dtype=np.uint8)
    out = blend_heatmap(thumb, np.array([[0.0, 1.0]]), alpha=1.0)
    assert out[0, 0].tolist() == list(VIRIDIS_LOW) and out[0, 1].tolist() == list(VIRIDIS_HIGH)
    layer = heatmap_rgba(np.array([[0.0, 1.0]]))
    assert layer[0, 0].tolist() == [*VIRIDIS_LOW, 255] and layer[0, 1, :3].tolist() == [
        *VIRIDIS_HIGH
    ]


def test_score_labels_name_the_score_and_its_scale() -> None:
    assert score_label("instance_probability", "none") == "instance probability"
    assert score_label("attention", "rank") == "attention (rank-normalised)"
    assert score_label("attention", "none") == "attention (raw)"
    assert score_label("instance_probability", "minmax") == (
        "instance probability (min-max normalised)"
    )
    with pytest.raises(ValueError, match="unknown score kind 'heat'"):
        score_label("heat", "rank")
    assert colorbar_ticks("rank", 0.0, 1.0)[1] == [
        "0 (lowest tile)",
        "0.5 (median)",
        "1 (highest tile)",
    ]
    assert colorbar_ticks("none", 0.0, 1.0) == ([0.0, 0.5, 1.0], ["0", "0.5", "1"])


def _near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.abs(pixel[:3].astype(int) - np.array(colour)).max() <= tol)


def test_colour_bar_image_runs_from_low_to_high(tmp_path: Path) -> None:
    path = save_colorbar_png(tmp_path / "bar.png", label="instance probability", height=300)
    img = np.asarray(Image.open(path))
    assert img.shape[:2] == (300, 170)
    column = img[:, 23]  # through the middle of the bar
    assert _near(column[int(0.06 * 300) + 3], VIRIDIS_HIGH)  # top: vmax
    assert _near(column[int(0.94 * 300) - 3], VIRIDIS_LOW)  # bottom: vmin
    # the label and tick labels are drawn right of the bar: dark text pixels there
    assert (img[:, 40:, :3].min(axis=2) < 100).sum() > 50


def test_save_heatmap_png(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    plain = save_heatmap_png(tmp_path / "a" / "plain.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(plain)), img)
    fancy = save_heatmap_png(tmp_path / "fancy.png", img, title="slide", colorbar=True)
    w, h = Image.open(fancy).size
    assert w > 40 and h > 30
    # the colour bar beside the image holds both ends of the colour map
    big = np.zeros((200, 200, 3), dtype=np.uint8)
    fancy = save_heatmap_png(tmp_path / "big.png", big, title="slide", colorbar=True)
    pixels = np.asarray(Image.open(fancy).convert("RGB"))[:, 200:]
    flat = pixels.reshape(-1, 3).astype(int)
    for colour in (VIRIDIS_LOW, VIRIDIS_HIGH):
        assert (np.abs(flat - np.array(colour)).max(axis=1) <= 12).any(), colour


def test_geojson_polygon_and_properties(tmp_path: Path) -> None:
    coords = np.array([[100, 200], [356, 200]])
    fc = tiles_to_geojson(coords, 256, np.array([0.75, np.nan]), labels=["tumour", None])
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    first = fc["features"][0]
    assert first["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[100, 200], [356, 200], [356, 456], [100, 456], [100, 200]]],
    }
    assert first["properties"]["objectType"] == "tile"
    assert first["properties"]["measurements"] == {"score": 0.75}
    assert first["properties"]["classification"]["name"] == "tumour"
    second = fc["features"][1]["properties"]
    assert "measurements" not in second and "classification" not in second
    path = write_geojson(tmp_path / "t.geojson", fc)
    assert json.loads(path.read_text()) == fc
    det = tiles_to_geojson(coords, 256, np.zeros(2), labels="x", object_type="detection")
    assert {f["properties"]["objectType"] for f in det["features"]} == {"detection"}
    with pytest.raises(ValueError, match="labels has 1 entries for 2 tiles"):
        tiles_to_geojson(coords, 256, labels=["a"])


def test_rank_tiles() -> None:
    s = np.array([0.2, np.nan, 0.9, 0.2, 0.5])
    assert rank_tiles(s, 2).tolist() == [2, 4]
    assert rank_tiles(s, 3, lowest=True).tolist() == [0, 3, 4]
    assert rank_tiles(s, 10).tolist() == [2, 4, 0, 3]


def test_save_top_tiles_reads_the_right_regions(tmp_path: Path) -> None:
    from medcl.io.slides import open_slide
    from medcl.testing.slides import write_pyramidal_tiff

    # level 0: 128x128, each 32-px tile a flat grey value = 10 * tile index
    img = np.zeros((128, 128, 3), dtype=np.uint8)
    coords = []
    for r in range(4):
        for c in range(4):
            img[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = 10 * (4 * r + c)
            coords.append([c * 32, r * 32])
    path = write_pyramidal_tiff(
        tmp_path / "s.tif", img, levels=2, tile=64, compression="zlib", mpp=0.5
    )
    scores = np.linspace(0.0, 1.0, 16)
    with open_slide(path) as slide:
        rows = save_top_tiles(
            slide, np.array(coords), scores, 2, 0, 32, tmp_path / "top", bottom_k=1
        )
    assert [(r["kind"], r["rank"]) for r in rows] == [("top", 1), ("top", 2), ("bottom", 1)]
    assert rows[0]["file"] == "top_01_score1.0000_x96_y96.png"
    tile = np.asarray(Image.open(tmp_path / "top" / str(rows[0]["file"])))
    assert tile.shape == (32, 32, 3) and (tile == 150).all()
    bottom = np.asarray(Image.open(tmp_path / "top" / str(rows[2]["file"])))
    assert (bottom == 0).all()
    with (tmp_path / "top" / "top_tiles.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["file"] for t in table] == [r["file"] for r in rows]
    assert table[1]["x"] == "64" and table[1]["y"] == "96"


def _slide(tmp_path: Path, size: int = 256, levels: int = 2) -> Path:
    from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

    image, _ = synthetic_tissue_image(size, size, seed=1)
    return write_pyramidal_tiff(
        tmp_path / "slide.tif", image, levels=levels, tile=64, compression="zlib", mpp=0.5
    )


def test_patch_geometry_from_attrs(tmp_path: Path) -> None:
    from medcl.errors import InvalidInputError
    from medcl.io.slides import open_slide
    from medcl.mil.slide_heatmap import patch_geometry

    src = tmp_path / "f.h5"
    xy = np.array([[0, 0], [64, 0], [0, 128]])
    with open_slide(_slide(tmp_path)) as slide:
        # medcl layout: everything given
        attrs = {"patch_size_level0": 64, "patch_level": 1, "read_size": 32, "patch_size": 32}
        assert patch_geometry(attrs, slide, xy, src) == (64, 1, 32)
        # CLAM: patch_size at patch_level (downsample 2)
        assert patch_geometry({"patch_size": 32, "patch_level": 1}, slide, xy, src) == (64, 1, 32)
        # patch_size at target_mpp 1.0 on a 0.5 um/px slide, no level: 2x in level-0
        assert patch_geometry({"patch_size": 16, "target_mpp": 1.0}, slide, xy, src) == (
            32,
            0,
            32,
        )
        # nothing: the grid spacing (64 in x, 128 in y) -> 64
        assert patch_geometry({}, slide, xy, src) == (64, 0, 64)
        with pytest.raises(InvalidInputError, match=r"patch_level 5 but slide\.tif has 2 levels"):
            patch_geometry({"patch_level": 5}, slide, xy, src)
        with pytest.raises(
            InvalidInputError,
            match="no patch_size attribute and too few tiles to infer the tile size",
        ):
            patch_geometry({}, slide, xy[:1], src)


def test_slide_mismatch_is_reported(tmp_path: Path) -> None:
    from medcl.errors import InvalidInputError
    from medcl.io.slides import open_slide
    from medcl.mil.slide_heatmap import _check_slide

    src = tmp_path / "f.h5"
    with open_slide(_slide(tmp_path)) as slide:
        _check_slide({"level0_width": 256, "level0_height": 256}, slide, np.array([[0, 0]]), src)
        with pytest.raises(InvalidInputError, match="tiles come from a 512x256 slide but"):
            _check_slide({"level0_width": 512, "level0_height": 256}, slide, np.zeros((1, 2)), src)
        with pytest.raises(InvalidInputError, match=r"fall outside slide.tif \(256x256\)"):
            _check_slide({}, slide, np.array([[0, 0], [300, 10]]), src)


def test_heatmap_config_rejects_unknown_cmap() -> None:
    from medcl.config import load_config
    from medcl.errors import ConfigError
    from medcl.mil.slide_heatmap import HeatmapConfig

    with pytest.raises(ConfigError, match="unknown colour map 'nope'"):
        load_config(HeatmapConfig, None, ["cmap=nope"])


def _write_features(
    path: Path, feats: np.ndarray, coords: np.ndarray | None, **attrs: object
) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats.astype(np.float32))
        if coords is not None:
            ds = f.create_dataset("coords", data=coords.astype(np.int64))
            ds.attrs.update(attrs)
        f.attrs.update({"encoder": "test", "embed_dim": feats.shape[1], "complete": True})
    return path


def _grid(n: int, side: int) -> np.ndarray:
    return np.array([[c * side, r * side] for r in range(n) for c in range(n)], dtype=np.int64)


def _heatmap_parser() -> argparse.ArgumentParser:
    from medcl.cli.mil_heatmap import add_heatmap_command

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_heatmap_command(sub)
    return p


def _inputs(model: Path, features: Path, slide: Path, out: Path) -> list[str]:
    """``heatmap`` arguments naming the inputs, a 128-px heatmap."""
    names = ("--model", "--features", "--slide", "--out")
    paths = (model, features, slide, out)
    return [
        "heatmap",
        *(x for pair in zip(names, map(str, paths), strict=True) for x in pair),
        "--thumbnail-size",
        "128",
    ]


def _mil_setup(tmp_path: Path, aggregator: str) -> tuple[Path, Path, Path, np.ndarray, np.ndarray]:
    """A 256x256 slide, a 4x4 grid of 64-px tiles with 8-D features, an untrained model."""
    train = pytest.importorskip("medcl.mil.train")
    from medcl.mil.aggregators import create_aggregator

    slide = _slide(tmp_path)
    coords = _grid(4, 64)
    feats = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    attrs = {"patch_size": 64, "patch_level": 0, "patch_size_level0": 64, "read_size": 64}
    features = _write_features(
        tmp_path / "slide.h5", feats, coords, level0_width=256, level0_height=256, **attrs
    )
    torch.manual_seed(0)
    model = create_aggregator(aggregator, in_dim=8, n_classes=2)
    cfg = train.MILTrainConfig(aggregator=aggregator)
    train.save_mil_model(tmp_path / "model.pt", model, cfg, ["benign", "tumour"])
    return tmp_path / "model.pt", features, slide, coords, feats


def _reference_scores(model_path: Path, feats: np.ndarray) -> Any:
    from medcl.mil.data import Bag
    from medcl.mil.train import load_mil_model, predict_bags

    model, _ = load_mil_model(model_path)
    bag = Bag(features=torch.from_numpy(feats), label=0, bag_id="slide", patient="slide")
    return predict_bags(model, [bag])


@pytest.mark.parametrize(
    ("aggregator", "kind"), [("max", "instance_probability"), ("abmil", "attention")]
)
def test_cli_heatmap_end_to_end(tmp_path: Path, aggregator: str, kind: str) -> None:
    import h5py

    from medcl.io.slides import open_slide
    from medcl.mil.geojson import tile_polygon

    model, features, slide, coords, feats = _mil_setup(tmp_path, aggregator)
    out = tmp_path / "out"
    args = _heatmap_parser().parse_args(
        [*_inputs(model, features, slide, out), "--top-k", "3", "--bottom-k", "1"]
    )
    assert args.func(args) == 0
    ref = _reference_scores(model, feats)
    scores = np.asarray(ref.instance_scores[0], dtype=np.float64)

    with h5py.File(out / "scores.h5") as f:
        np.testing.assert_array_equal(f["coords"][()], coords)
        np.testing.assert_allclose(f["scores"][()], scores, rtol=1e-5, atol=1e-7)
        assert f["coords"].attrs["patch_size_level0"] == 64
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["class_names"] == ["benign", "tumour"] and pred["score_kind"] == kind
    assert pred["aggregator"] == aggregator and pred["n_tiles"] == 16
    np.testing.assert_allclose(list(pred["probabilities"].values()), ref.bag_probs[0], rtol=1e-5)
    assert pred["bag_score"] == pytest.approx(float(ref.bag_scores[0]), rel=1e-5)

    geo = json.loads((out / "slide_tiles.geojson").read_text())
    assert len(geo["features"]) == 16
    assert geo["features"][5]["geometry"]["coordinates"] == [tile_polygon(64, 64, 64)]
    got = [f["properties"]["measurements"]["score"] for f in geo["features"]]
    np.testing.assert_allclose(got, scores, rtol=1e-5, atol=1e-7)

    with (out / "top_tiles" / "top_tiles.csv").open() as fh:
        table = list(csv.DictReader(fh))
    order = np.argsort(-scores, kind="stable")
    expect = [("top", order[0]), ("top", order[1]), ("top", order[2]), ("bottom", order[-1])]
    assert [(t["kind"], int(t["x"]), int(t["y"])) for t in table] == [
        (k, int(coords[i, 0]), int(coords[i, 1])) for k, i in expect
    ]
    with open_slide(slide) as s:
        region = s.read_region(tuple(coords[order[0]]), 0, (64, 64))
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "top_tiles" / table[0]["file"])), region
    )
    assert Image.open(out / "slide_heatmap.png").size[0] > 128  # colour bar beside the map
    assert (out / "config.yaml").is_file()
    # the score is named for what it is; probabilities raw (0-1), attention by rank
    label = {"max": "instance probability", "abmil": "attention (rank-normalised)"}[aggregator]
    assert pred["score_label"] == label and pred["cmap"] == "viridis"
    assert pred["normalise"] == ("none" if aggregator == "max" else "rank")
    assert pred["outputs"]["colorbar"] == "slide_colorbar.png"
    bar = np.asarray(Image.open(out / "slide_colorbar.png"))
    assert _near(bar[int(0.06 * bar.shape[0]) + 3, 23], VIRIDIS_HIGH)


def test_cli_heatmap_pixels_follow_tile_scores(tmp_path: Path) -> None:
    # alpha 1, gray colour map, raw scores, no decorations: pixel = 255 * instance probability
    model, features, slide, coords, feats = _mil_setup(tmp_path, "max")
    out = tmp_path / "plain"
    args = _heatmap_parser().parse_args(
        [
            *_inputs(model, features, slide, out),
            *("--alpha", "1", "--cmap", "gray", "--normalise", "none"),
            *("--set", "colorbar=false", "--set", "title=false"),
        ]
    )
    assert args.func(args) == 0
    scores = np.asarray(_reference_scores(model, feats).instance_scores[0])
    img = np.asarray(Image.open(out / "slide_heatmap.png"))
    assert img.shape == (128, 128, 3)
    centres = img[coords[:, 1] // 2 + 16, coords[:, 0] // 2 + 16, 0].astype(float)
    np.testing.assert_allclose(centres, 255 * scores, atol=1.01)
    # the layer the review app blends: the same colours, opaque on tiles only
    layer = np.asarray(Image.open(out / "slide_heatmap_layer.png"))
    assert layer.shape == (128, 128, 4)
    on = layer[coords[:, 1] // 2 + 16, coords[:, 0] // 2 + 16]
    np.testing.assert_allclose(on[:, 0].astype(float), 255 * scores, atol=1.01)
    assert (on[:, 3] == 255).all()
    covered = np.zeros((128, 128), dtype=bool)
    for x, y in coords // 2:
        covered[y : y + 32, x : x + 32] = True
    assert (layer[~covered, 3] == 0).all()


def test_cli_heatmap_bad_inputs(tmp_path: Path) -> None:
    from medcl.errors import InvalidInputError

    model, _, slide, coords, _ = _mil_setup(tmp_path, "max")
    wrong_dim = _write_features(tmp_path / "d5.h5", np.zeros((16, 5)), coords, patch_size=64)
    no_coords = _write_features(tmp_path / "nc.h5", np.zeros((16, 8)), None)
    cases = [
        (wrong_dim, "features have 5 dimensions but the model expects 8"),
        (no_coords, "no tile coordinates ('coords'); a heatmap needs them"),
    ]
    for features, message in cases:
        args = _heatmap_parser().parse_args(_inputs(model, features, slide, tmp_path / "o"))
        with pytest.raises(InvalidInputError) as info:
            args.func(args)
        assert str(info.value).startswith(f"{features}: {message}")
