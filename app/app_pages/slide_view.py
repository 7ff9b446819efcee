"""Viewer of a slide case: thumbnail with the MIL heatmap, top tiles, full-resolution zoom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app_pages.one_line import one_line_errors
from medcl.errors import MedclError
from medcl.review import service, slide_views, views
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail

THUMB_SIZE = 1024


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


def render(store: Store, user: UserInfo, detail: CaseDetail) -> None:
    """Draw the slide viewer of ``detail`` (artifacts slide, thumbnail, heatmap, top_tiles)."""
    art = detail.artifacts
    slide = str(service.artifact_path(store, detail, "slide"))
    thumb = str(service.artifact_path(store, detail, "thumbnail")) if art.get("thumbnail") else None
    heatmap = str(service.artifact_path(store, detail, "heatmap")) if art.get("heatmap") else None
    tiles = [
        str(service.artifact_path(store, detail, "top_tiles", i))
        for i in range(len(art.get("top_tiles") or []))
    ]
    mpp = float(art["mpp"]) if art.get("mpp") else None
    _viewer(detail.summary.id, slide, thumb, heatmap, mpp)
    if tiles:
        st.caption(f"Top {len(tiles)} tiles (highest attention first)")
        per_row = 4
        for start in range(0, len(tiles), per_row):
            cols = st.columns(per_row)
            for col, path in zip(cols, tiles[start : start + per_row], strict=False):
                col.image(_image(path, 256), caption=plain(Path(path).name), width="stretch")


@st.fragment
def _viewer(
    case_id: int, slide: str, thumb: str | None, heatmap: str | None, mpp: float | None
) -> None:
    with one_line_errors(case_id):
        _draw(case_id, slide, thumb, heatmap, mpp)


def _draw(
    case_id: int, slide: str, thumb: str | None, heatmap: str | None, mpp: float | None
) -> None:
    key = f"slide_{case_id}"
    pixels, dims = _thumbnail(slide, thumb, mpp)
    st.caption(f"Slide {plain(Path(slide).name)}: {dims[0]} x {dims[1]} px at level 0")
    zoom = st.columns(3)
    size = int(
        zoom[2].number_input(
            "Zoom size (px)", 16, slide_views.MAX_ZOOM, 512, 16, key=f"{key}_zoom_size"
        )
    )
    x = int(
        zoom[0].number_input(
            "Zoom x", 0, dims[0] - 1, max(0, (dims[0] - size) // 2), key=f"{key}_zoom_x"
        )
    )
    y = int(
        zoom[1].number_input(
            "Zoom y", 0, dims[1] - 1, max(0, (dims[1] - size) // 2), key=f"{key}_zoom_y"
        )
    )
    region = slide_views.clamp_region(x, y, size, dims)
    shown = pixels
    if heatmap is not None:
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key=f"{key}_opacity")
        shown = slide_views.blend_heatmap(pixels, _heatmap(heatmap), opacity)
    left, right = st.columns(2)
    left.image(
        slide_views.draw_box(shown, region, dims),
        width="stretch",
        caption="Thumbnail" + (" with heatmap" if heatmap else "") + "; box = zoom",
    )
    try:
        region_px, region = slide_views.read_zoom(Path(slide), x, y, size, mpp=mpp)
    except MedclError as exc:
        right.error(plain(exc))
        return
    right.image(
        region_px,
        width="stretch",
        caption=f"Zoom at full resolution: x={region.x}, y={region.y}, "
        f"{region.width} x {region.height} px",
    )
