"""The one GeoJSON writer: compact, atomic, no NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcl.io.geojson import write_geojson
from medcl.mil import geojson as mil_geojson
from medcl.wsi import tissue


def test_tissue_and_tile_writers_are_the_one_writer() -> None:
    assert mil_geojson.write_geojson is write_geojson
    assert tissue.write_geojson is write_geojson


def test_write_is_compact_and_round_trips(tmp_path: Path) -> None:
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"s": 0.5}}]}
    path = write_geojson(tmp_path / "deep" / "a.geojson", fc)
    assert path == tmp_path / "deep" / "a.geojson"
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == fc and ", " not in text and ": " not in text
    assert [p.name for p in path.parent.iterdir()] == ["a.geojson"]  # no temporary file left


def test_nan_refused_and_the_previous_file_kept(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": []})
    before = path.read_bytes()
    bad = {"type": "FeatureCollection", "features": [{"properties": {"s": float("nan")}}]}
    with pytest.raises(ValueError, match="Out of range float values"):
        write_geojson(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.geojson"]
