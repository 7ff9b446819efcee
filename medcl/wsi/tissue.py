"""Tissue detection on a slide thumbnail, its outline as polygons, and QuPath GeoJSON (pure).

:func:`detect_tissue` turns an RGB thumbnail into a boolean mask and outline polygons:

1. **Background** (never tissue): near-white pixels (HSV value >= ``white_value`` and saturation
   <= ``white_saturation``: glass), near-black pixels (value < ``black_value``: slide borders,
   scanner fill) and grey pixels (saturation < ``min_saturation``).
2. **Pen marks** (never tissue), HSV rules (hue in [0, 1)), chosen by ``pen_colors``:

   =====  ==========================================================================
   blue   hue in [0.55, 0.70], saturation >= 0.40, value >= 0.55 (bright blue ink;
          hematoxylin is purple, hue >= 0.70, or darker)
   green  hue in [0.20, 0.55), saturation >= 0.20 (green / teal ink and tissue dye;
          H&E has no green or cyan)
   black  value < 0.25 and saturation < 0.25 (dark grey ink; dark nuclei stay, they
          are purple, more saturated or lighter)
   red    hue >= 0.97 or <= 0.03, saturation >= 0.75, value >= 0.40 (true red ink;
          eosin is pink-magenta, hue ~0.85-0.95, less saturated)
   =====  ==========================================================================

   Only pen pieces of at least ``min_pen_area`` count (single red blood cells or dark nuclei
   match the colour rules on a fine thumbnail; a pen stroke is large); the pen mask is then
   dilated by ``pen_dilation`` pixels to take the ink's anti-aliased rim.
3. **Tissue**: saturation above an Otsu threshold computed over the remaining pixels (or the
   given ``saturation_threshold``), never below ``min_saturation``.
4. **Clean-up**: binary opening (``open_radius``) drops speckle, closing (``close_radius``)
   joins fragments; objects smaller than ``min_tissue_area`` are dropped and holes smaller than
   ``min_hole_area`` filled (areas in thumbnail pixels, or in square microns with
   ``area_unit="um2"`` and the thumbnail's ``mpp``); pen pixels are removed again at the end.

Polygons use continuous thumbnail coordinates: pixel ``(row r, column c)`` covers
``[c, c+1) x [r, r+1)``, so multiplying by the level-0 / thumbnail ratio gives level-0 pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medcl.errors import InvalidInputError
from medcl.io.geojson import write_geojson
from medcl.wsi.components import (
    component_masks,
    fill_holes,
    find_runs,
    remove_small_holes,
    remove_small_objects,
)
from medcl.wsi.hsv_rules import (
    LEVELS,
    PEN_COLORS,
    hsv_levels,
    otsu_of_levels,
    pen_mask,
    pen_mask_levels,
    rgb_to_hsv,
    where_levels,
)
from medcl.wsi.morphology import binary_closing, binary_dilation, binary_opening
from medcl.wsi.polyline import simplify_polyline

__all__ = [
    "PEN_COLORS",
    "TissuePolygon",
    "TissueResult",
    "contours_to_geojson",
    "detect_tissue",
    "mask_to_polygons",
    "pen_mask",
    "polygons_to_mask",
    "read_geojson_polygons",
    "rgb_to_hsv",
    "signed_area",
    "simplify_polyline",
    "write_geojson",
]

TISSUE_CLASS = {"name": "Tissue", "color": [0, 160, 60]}


@dataclass(frozen=True)
class TissuePolygon:
    """One tissue piece: ``exterior`` ``(K, 2)`` float64 (x, y) closed ring, ``holes`` likewise."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class TissueResult:
    """``mask`` ``(h, w)`` bool, ``contours`` in thumbnail px, ``threshold`` saturation used."""

    mask: np.ndarray
    contours: list[TissuePolygon]
    threshold: float


def _area_px(area: float, unit: str, mpp: float | None, name: str) -> float:
    if unit == "px":
        return float(area)
    if unit != "um2":
        raise ValueError(f"area_unit must be 'px' or 'um2', got {unit!r}")
    if area and (mpp is None or not mpp > 0):
        raise ValueError(f"{name} in um2 needs the thumbnail's mpp")
    return float(area) / (mpp * mpp) if area and mpp else 0.0


def detect_tissue(
    thumbnail: np.ndarray,
    *,
    mpp: float | None = None,
    saturation_threshold: float | None = None,
    min_saturation: float = 0.05,
    white_value: float = 0.85,
    white_saturation: float = 0.10,
    black_value: float = 0.12,
    pen_colors: Sequence[str] = PEN_COLORS,
    pen_dilation: int = 2,
    open_radius: int = 1,
    close_radius: int = 2,
    min_tissue_area: float = 0.0,
    min_hole_area: float = 0.0,
    min_pen_area: float = 0.0,
    area_unit: Literal["px", "um2"] = "px",
    contour_tolerance: float = 0.5,
) -> TissueResult:
    """Tissue mask and outline of an RGB thumbnail (rules in the module docstring).

    Args:
        thumbnail: ``(h, w, 3)`` uint8 RGB.
        mpp: microns per thumbnail pixel (needed only for ``area_unit="um2"``).
        pen_colors: pen rules to apply; ``()`` keeps pen marks.
        contour_tolerance: polygon simplification in thumbnail px (0 keeps every vertex).

    Returns:
        :class:`TissueResult`; an empty mask and no contours when nothing is tissue.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] < 3:
        raise ValueError(f"thumbnail must be (h, w, 3), got {thumbnail.shape}")
    # HSV stays uint8 (levels / 255 are the floats of rgb_to_hsv); every threshold rule is a
    # 256-entry lookup table, so no float copy of the thumbnail is made
    hsv8 = hsv_levels(thumbnail)
    sat8, val8 = np.ascontiguousarray(hsv8[..., 1]), np.ascontiguousarray(hsv8[..., 2])
    white = where_levels(val8, white_value <= LEVELS) & where_levels(
        sat8, white_saturation >= LEVELS
    )
    background = white | where_levels(val8, black_value > LEVELS)
    background |= where_levels(sat8, min_saturation > LEVELS)
    min_obj = _area_px(min_tissue_area, area_unit, mpp, "min_tissue_area")
    min_hole = _area_px(min_hole_area, area_unit, mpp, "min_hole_area")
    min_pen = _area_px(min_pen_area, area_unit, mpp, "min_pen_area")
    pens = pen_mask_levels(hsv8, pen_colors) if pen_colors else np.zeros(sat8.shape, dtype=bool)
    if min_pen > 1 and pens.any():
        pens = remove_small_objects(pens, math.ceil(min_pen) - 1, connectivity=2)
    if pen_dilation > 0 and pens.any():
        pens = binary_dilation(pens, pen_dilation)
    # Otsu separates glass (low saturation) from stain, so it sees background pixels too
    counts = np.bincount(sat8[~pens & where_levels(val8, black_value <= LEVELS)], minlength=256)
    present = np.flatnonzero(counts)
    if saturation_threshold is not None:
        threshold = float(saturation_threshold)
    elif counts.sum() < 2 or float(LEVELS[present[-1]] - LEVELS[present[0]]) < 1e-6:
        threshold = min_saturation
    else:
        threshold = max(otsu_of_levels(counts), min_saturation)
    sat_above = where_levels(sat8, threshold < LEVELS)
    mask = sat_above & ~background & ~pens
    if open_radius > 0:
        mask = binary_opening(mask, open_radius)
    if close_radius > 0:
        # pad so that the closing's erosion does not eat tissue touching the image border
        pad = close_radius + 1
        closed = binary_closing(np.pad(mask, pad), close_radius)
        mask = closed[pad:-pad, pad:-pad]
    if min_obj > 0:
        mask = remove_small_objects(mask, math.ceil(min_obj) - 1, connectivity=2)
    if min_hole > 0:
        mask = remove_small_holes(mask, math.ceil(min_hole) - 1)
    mask = np.asarray(mask & ~pens, dtype=bool)
    return TissueResult(mask, mask_to_polygons(mask, tolerance=contour_tolerance), threshold)


def _ring(contour_rc: np.ndarray, offset: tuple[int, int], tolerance: float) -> np.ndarray:
    # marching squares puts a vertex on every pixel edge: drop those on straight runs first
    turn = np.diff(contour_rc, axis=0)
    keep = np.ones(len(contour_rc), dtype=bool)
    keep[1:-1] = np.any(turn[1:] != turn[:-1], axis=1)
    contour_rc = contour_rc[keep]
    if tolerance > 0:
        contour_rc = simplify_polyline(contour_rc, tolerance)
    xy = np.stack([contour_rc[:, 1] + offset[1], contour_rc[:, 0] + offset[0]], axis=1) + 0.5
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    return xy.astype(np.float64)


def _longest(contours: list[np.ndarray]) -> np.ndarray:
    return max(contours, key=len)


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an ``(K, 2)`` (x, y) ring; positive when counter-clockwise (x right,
    y up)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def mask_to_polygons(mask: np.ndarray, *, tolerance: float = 0.5) -> list[TissuePolygon]:
    """Outline every 8-connected piece of ``mask`` ``(h, w)`` with its holes, in the continuous
    pixel coordinates of the module docstring."""
    from skimage.measure._find_contours import find_contours  # without skimage.measure's scipy

    runs = find_runs(mask, connectivity=2)
    out: list[TissuePolygon] = []
    for box, piece in component_masks(runs, pad=1):
        offset = (box[0].start - 1, box[1].start - 1)
        filled = fill_holes(piece)
        outer = _longest(find_contours(filled.astype(np.float32), 0.5, fully_connected="high"))
        holes = []
        for hbox, hole in component_masks(find_runs(filled & ~piece, connectivity=1), pad=1):
            corner = (offset[0] + hbox[0].start - 1, offset[1] + hbox[1].start - 1)
            crop = hole.astype(np.float32)
            holes.append(_ring(_longest(find_contours(crop, 0.5)), corner, tolerance))
        exterior = _ring(outer, offset, tolerance)
        if signed_area(exterior) < 0:
            exterior = exterior[::-1]
        holes = [h if signed_area(h) < 0 else h[::-1] for h in holes]
        out.append(TissuePolygon(exterior, tuple(holes)))
    return out


def polygons_to_mask(
    polygons: Sequence[TissuePolygon], shape: tuple[int, int], scale: float = 1.0
) -> np.ndarray:
    """Rasterise polygons (coordinates divided by ``scale`` first) into an ``(h, w)`` bool mask:
    a pixel is set when its centre is inside an exterior and outside that piece's holes."""
    from skimage.draw import polygon2mask

    out = np.zeros(shape, dtype=bool)
    for poly in polygons:

        def raster(ring: np.ndarray) -> np.ndarray:
            rc = np.stack([ring[:, 1] / scale - 0.5, ring[:, 0] / scale - 0.5], axis=1)
            return polygon2mask(shape, rc)

        piece = raster(poly.exterior)
        for hole in poly.holes:
            piece &= ~raster(hole)
        out |= piece
    return out


def contours_to_geojson(
    contours: Sequence[TissuePolygon], scale: float | tuple[float, float] = 1.0
) -> dict[str, Any]:
    """GeoJSON FeatureCollection that QuPath imports as "Tissue" annotations.

    Args:
        contours: polygons in thumbnail px.
        scale: level-0 px per thumbnail px (one number or ``(sx, sy)``).
    """
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    factor = np.array([sx, sy], dtype=np.float64)

    def ring(points: np.ndarray) -> list[list[float]]:
        return [[round(float(x), 2), round(float(y), 2)] for x, y in points * factor]

    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [ring(p.exterior), *(ring(h) for h in p.holes)],
            },
            "properties": {"objectType": "annotation", "classification": dict(TISSUE_CLASS)},
        }
        for p in contours
    ]
    return {"type": "FeatureCollection", "features": features}


def read_geojson_polygons(path: str | PathLike[str]) -> list[TissuePolygon]:
    """Polygons (level-0 px) of a GeoJSON file: ours or a QuPath export (FeatureCollection, a
    Feature, or a list of Features; Polygon and MultiPolygon geometries)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(file, f"not a readable GeoJSON file ({exc})") from None
    if isinstance(data, dict):
        features = data.get("features", [data])
    elif isinstance(data, list):
        features = data
    else:
        raise InvalidInputError(file, "GeoJSON must be a FeatureCollection, Feature or list")
    out: list[TissuePolygon] = []
    for feature in features:
        geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
        if not isinstance(geometry, dict):
            raise InvalidInputError(file, "a GeoJSON feature has no geometry")
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        parts: list[Any] = []
        if kind == "Polygon":
            parts = [coords]
        elif kind == "MultiPolygon":
            parts = list(coords or [])
        for rings in parts:
            arrays = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings]
            out.append(TissuePolygon(arrays[0], tuple(arrays[1:])))
    return out
