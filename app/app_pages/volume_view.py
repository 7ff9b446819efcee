"""Viewer of a volume case: slices in three planes with the predicted mask, Dice with the truth."""

from __future__ import annotations

import streamlit as st

from app_pages.one_line import one_line_errors
from medcl.review import service, views
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail


@st.cache_resource(max_entries=3, show_spinner="Reading the volume...")
def _load(image: str, mask: str, truth: str | None) -> views.VolumeCase:
    from pathlib import Path

    return views.load_volume_case(Path(image), Path(mask), Path(truth) if truth else None)


@st.cache_data(max_entries=8, show_spinner=False)
def _window(image: str, mask: str, truth: str | None) -> tuple[float, float]:
    return views.intensity_window(_load(image, mask, truth).image)


def render(store: Store, user: UserInfo, detail: CaseDetail) -> None:
    """Draw the volume viewer of ``detail`` (artifacts image, mask, ground_truth, labels)."""
    art = detail.artifacts
    image = str(service.artifact_path(store, detail, "image"))
    mask = str(service.artifact_path(store, detail, "mask"))
    truth = (
        str(service.artifact_path(store, detail, "ground_truth"))
        if art.get("ground_truth")
        else None
    )
    _viewer(detail.summary.id, image, mask, truth, dict(art.get("labels") or {}))


@st.fragment
def _viewer(case_id: int, image: str, mask: str, truth: str | None, labels: dict[str, str]) -> None:
    with one_line_errors(case_id):
        _draw(case_id, image, mask, truth, labels)


def _draw(case_id: int, image: str, mask: str, truth: str | None, labels: dict[str, str]) -> None:
    case = _load(image, mask, truth)
    names = views.class_names(case.mask, labels)
    key = f"volume_{case_id}"
    top = st.columns([2, 1])
    plane = top[0].radio("Plane", views.PLANES, key=f"{key}_plane", horizontal=True)
    opacity = top[1].slider("Mask opacity", 0.0, 1.0, 0.5, 0.05, key=f"{key}_opacity")
    depth = case.image.shape[views.PLANE_AXIS[plane]]
    index = st.slider("Slice", 0, depth - 1, depth // 2, key=f"{key}_{plane}_slice")
    toggles = st.columns(max(1, min(len(names), 6)))
    visible = {
        c
        for i, (c, name) in enumerate(names.items())
        if toggles[i % len(toggles)].checkbox(plain(name), True, key=f"{key}_class_{c}")
    }
    window = _window(image, mask, truth)
    aspect = views.plane_aspect(case.spacing, plane)
    shown = [("prediction", case.mask)] + (
        [("ground truth", case.ground_truth)] if case.ground_truth is not None else []
    )
    cols = st.columns(len(shown))
    for col, (title, labelmap) in zip(cols, shown, strict=True):
        rgb = views.render_volume_slice(
            case.image,
            labelmap,
            plane,
            index,
            window=window,
            opacity=opacity,
            visible=visible,
            aspect=aspect,
        )
        col.image(views.enlarge(rgb), caption=f"{title}, {plane} slice {index}", width="stretch")
    legend = " · ".join(
        f"<span style='color:rgb{views.class_colour(c)}'>■</span> {plain(n)}"
        for c, n in names.items()
    )
    st.markdown(legend, unsafe_allow_html=True)
    if case.ground_truth is not None:
        st.caption("Dice per class (prediction vs ground truth)")
        st.dataframe(views.dice_rows(case.mask, case.ground_truth, labels), hide_index=True)
