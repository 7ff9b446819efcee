"""Tiles with scores as GeoJSON that QuPath imports (File > Import objects).

One ``Feature`` per tile: a square ``Polygon`` in level-0 pixels (closed ring, clockwise in
image coordinates: top-left, top-right, bottom-right, bottom-left, top-left) and QuPath's
``properties``: ``objectType`` (``"tile"`` or ``"detection"``), ``measurements``
``{"score": s}`` and, when a label is given, ``classification`` ``{"name", "color"}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medcl.io.geojson import write_geojson as write_geojson

logger = logging.getLogger(__name__)

OBJECT_TYPES: tuple[str, ...] = ("tile", "detection", "annotation")
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)


def tile_polygon(x: int, y: int, side: int) -> list[list[int]]:
    """Closed ring ``[[x, y], [x+side, y], [x+side, y+side], [x, y+side], [x, y]]``."""
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def tiles_to_geojson(
    coords: np.ndarray,
    patch_size_level0: float,
    scores: np.ndarray | None = None,
    *,
    labels: Sequence[str | None] | str | None = None,
    object_type: str = "tile",
    extra_measurements: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` with one square per tile.

    Args:
        coords: ``(N, 2)`` (x, y) level-0 top-left corners.
        patch_size_level0: tile side in level-0 pixels.
        scores: ``(N,)`` score per tile, stored as measurement ``score`` (NaN is left out:
            JSON has no NaN).
        labels: one class name for every tile, or a name (or None) per tile; tiles with a name
            get ``classification`` ``{"name", "color"}`` (colours by first appearance).
        object_type: QuPath object type, ``tile``, ``detection`` or ``annotation``.
        extra_measurements: more ``(N,)`` measurements by name.

    Returns:
        The collection as plain dicts and lists (``json.dumps``-able).
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"unknown object type {object_type!r}; choose one of {OBJECT_TYPES}")
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = len(xy)
    side = round(patch_size_level0)
    if side <= 0:
        raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0}")
    measures: dict[str, np.ndarray] = {}
    if scores is not None:
        measures["score"] = np.asarray(scores, dtype=np.float64).reshape(-1)
    for name, values in (extra_measurements or {}).items():
        measures[name] = np.asarray(values, dtype=np.float64).reshape(-1)
    for name, values in measures.items():
        if len(values) != n:
            raise ValueError(f"measurement {name!r} has {len(values)} values for {n} tiles")
    names: list[str | None]
    if labels is None or isinstance(labels, str):
        names = [labels] * n
    else:
        names = list(labels)
        if len(names) != n:
            raise ValueError(f"labels has {len(names)} entries for {n} tiles")
    colours: dict[str, list[int]] = {}
    for label in names:
        if label is not None and label not in colours:
            colours[label] = list(_PALETTE[len(colours) % len(_PALETTE)])

    features = []
    for i, (x, y) in enumerate(xy.tolist()):
        props: dict[str, Any] = {"objectType": object_type}
        meas = {k: float(v[i]) for k, v in measures.items() if math.isfinite(float(v[i]))}
        if meas:
            props["measurements"] = meas
        if names[i] is not None:
            props["classification"] = {"name": names[i], "color": colours[str(names[i])]}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [tile_polygon(x, y, side)]},
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}
