"""Viewer of a slide case: thumbnail with the MIL heatmap and its colour bar, click-to-zoom,
top tiles linked to their place, full-resolution zoom.

The thumbnail is a ``streamlit-image-coordinates`` component: a click centres the zoom there
(the number inputs stay as a fallback). The zoom region is outlined on the thumbnail in black and
white. Each top tile has a button that moves the zoom onto it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from app_pages.one_line import one_line_errors
from medcl.errors import MedclError
from medcl.review import service, slide_views, views
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.errors import NotFoundError
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail

THUMB_SIZE = 1024
DEFAULT_ZOOM = 512


@st.cache_data(max_entries=16, show_spinner="Reading the slide...")
def _thumbnail(
    slide: str, thumbnail: str | None, mpp: float | None
) -> tuple[np.ndarray, tuple[int, int]]:
    if thumbnail:  # the pipeline's own thumbnail, when it wrote one, matches its heatmap
        return views.load_rgb(Path(thumbnail), THUMB_SIZE), slide_views.slide_dimensions(
            Path(slide)
        )
    return slide_views.slide_thumbnail(Path(slide), THUMB_SIZE, mpp=mpp)


@st.cache_data(max_entries=16, show_spinner=False)
def _heatmap(path: str) -> np.ndarray:
    return slide_views.load_heatmap(Path(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _image(path: str, max_size: int | None = None) -> np.ndarray:
    return views.load_rgb(Path(path), max_size)


@st.cache_data(max_entries=16, show_spinner=False)
def _tile_side(path: str) -> int | None:
    return slide_views.tile_side(Path(path))


def _optional(store: Store, detail: CaseDetail, key: str) -> str | None:
    """The artifact's file, None when the record has none."""
    if not detail.artifacts.get(key):
        return None
    return str(service.artifact_path(store, detail, key))


def render(store: Store, user: UserInfo, detail: CaseDetail) -> None:
    """Draw the slide viewer of ``detail`` (artifacts slide, thumbnail, heatmap, heatmap_colorbar,
    heatmap_score, scores, top_tiles)."""
    art = detail.artifacts
    tiles = [
        str(service.artifact_path(store, detail, "top_tiles", i))
        for i in range(len(art.get("top_tiles") or []))
    ]
    scores = _optional(store, detail, "scores")
    view = {
        "slide": str(service.artifact_path(store, detail, "slide")),
        "thumb": _optional(store, detail, "thumbnail"),
        "heatmap": _optional(store, detail, "heatmap"),
        "colorbar": _optional(store, detail, "heatmap_colorbar"),
        "score_name": str(art.get("heatmap_score") or "score"),
        "mpp": float(art["mpp"]) if art.get("mpp") else None,
        "tiles": tiles,
        "tile_side": _tile_side(scores) if scores else None,
    }
    _viewer(detail.summary.id, view)


@st.fragment
def _viewer(case_id: int, view: dict[str, Any]) -> None:
    with one_line_errors(case_id):
        _draw(case_id, view)


def _set_zoom(key: str, region: slide_views.Region) -> None:
    state = st.session_state
    state[f"{key}_zoom_x"], state[f"{key}_zoom_y"] = region.x, region.y
    state[f"{key}_zoom_size"] = max(16, region.width)


def _clicked(key: str, dims: tuple[int, int]) -> None:
    """Thumbnail click: centre the zoom on it (runs before the fragment redraws)."""
    click = st.session_state.get(f"{key}_click")
    if not click:
        return
    size = int(st.session_state.get(f"{key}_zoom_size", DEFAULT_ZOOM))
    shown = (float(click["width"]), float(click["height"]))
    _set_zoom(key, slide_views.zoom_at((click["x"], click["y"]), shown, dims, size))


def _to_tile(key: str, tile: slide_views.TopTile, side: int | None, dims: tuple[int, int]) -> None:
    size = int(st.session_state.get(f"{key}_zoom_size", DEFAULT_ZOOM))
    _set_zoom(key, slide_views.tile_region(tile, side, size, dims))


def _colour_bar(view: dict[str, Any]) -> None:
    st.markdown(f"**Heatmap colour**: {plain(view['score_name'])}")
    if view["colorbar"]:
        st.image(_image(view["colorbar"]), caption="colour bar written by the pipeline")
        return
    st.image(slide_views.colorbar_image(width=200, height=16), width="stretch")
    st.caption(
        f"{slide_views.HEATMAP_CMAP}: low (left, dark) to high (right, yellow); "
        "range 0 to 1 (the pipeline did not write its own colour bar)"
    )


def _draw(case_id: int, view: dict[str, Any]) -> None:
    key = f"slide_{case_id}"
    pixels, dims = _thumbnail(view["slide"], view["thumb"], view["mpp"])
    st.caption(
        f"Slide {plain(Path(view['slide']).name)}: {dims[0]} x {dims[1]} px at level 0. "
        "Click the thumbnail to zoom there."
    )
    inputs = st.columns([1, 1, 1, 2])
    size = int(
        inputs[2].number_input(
            "Zoom size (px)", 16, slide_views.MAX_ZOOM, DEFAULT_ZOOM, 16, key=f"{key}_zoom_size"
        )
    )
    x = int(
        inputs[0].number_input(
            "Zoom x", 0, dims[0] - 1, max(0, (dims[0] - size) // 2), key=f"{key}_zoom_x"
        )
    )
    y = int(
        inputs[1].number_input(
            "Zoom y", 0, dims[1] - 1, max(0, (dims[1] - size) // 2), key=f"{key}_zoom_y"
        )
    )
    region = slide_views.clamp_region(x, y, size, dims)
    shown = pixels
    if view["heatmap"] is not None:
        opacity = inputs[3].slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key=f"{key}_opacity")
        shown = slide_views.blend_heatmap(pixels, _heatmap(view["heatmap"]), opacity)
    thumb_col, bar_col = st.columns([5, 1]) if view["heatmap"] else (st.container(), None)
    with thumb_col:
        streamlit_image_coordinates(
            slide_views.draw_box(shown, region, dims),
            width="stretch",
            key=f"{key}_click",
            on_click=lambda: _clicked(key, dims),
            cursor="crosshair",
        )
        st.caption(
            "Thumbnail" + (" with heatmap" if view["heatmap"] else "") + "; black-and-white box = "
            f"zoom at x={region.x}, y={region.y}, {region.width} x {region.height} px"
        )
    if bar_col is not None:
        with bar_col:
            _colour_bar(view)
    zoom_col, tiles_col = st.columns([3, 2])
    try:
        region_px, read = slide_views.read_zoom(Path(view["slide"]), x, y, size, mpp=view["mpp"])
    except MedclError as exc:
        zoom_col.error(plain(exc))
    else:
        zoom_col.image(
            region_px,
            width="stretch",
            caption=f"Zoom at full resolution: x={read.x}, y={read.y}, "
            f"{read.width} x {read.height} px",
        )
    with tiles_col:
        _top_tiles(key, view, dims)


def _top_tiles(key: str, view: dict[str, Any], dims: tuple[int, int]) -> None:
    tiles: list[str] = view["tiles"]
    if not tiles:
        return
    st.markdown(f"**Top {len(tiles)} tiles** (highest score first)")
    for i, path in enumerate(tiles):
        tile = slide_views.parse_tile_name(Path(path).name)
        left, right = st.columns([1, 2])
        try:
            left.image(_image(path, 256), width="stretch")
        except (MedclError, NotFoundError) as exc:
            left.caption(plain(exc))
        if tile is None:
            right.caption(f"{plain(Path(path).name)} (no position recorded)")
            continue
        right.caption(f"#{tile.rank}: score {tile.score:.3f} at x={tile.x}, y={tile.y}")
        right.button(
            f"Zoom to tile {tile.rank}",
            key=f"{key}_tile_{i}",
            on_click=_to_tile,
            args=(key, tile, view["tile_side"], dims),
            icon=":material/zoom_in:",
        )
