"""Viewer of a volume case: slices in three planes with the predicted mask, Dice with the truth.

Window / level: presets for the case's modality (``artifacts.modality``; CT soft tissue, lung and
bone in Hounsfield units, MR percentile windows) or manual width and level. Slices keep the voxel
spacing's proportions; the legend lists the classes toggled on.
"""

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
def _window(image: str, mask: str, truth: str | None, preset: str) -> tuple[float, float]:
    chosen = next(p for p in _all_presets() if p.name == preset)
    return views.preset_window(chosen, _load(image, mask, truth).image)


def _all_presets() -> list[views.WindowPreset]:
    return views.window_presets(None)


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
    modality = views.modality_of(art.get("modality"))
    _viewer(detail.summary.id, image, mask, truth, dict(art.get("labels") or {}), modality)


@st.fragment
def _viewer(
    case_id: int,
    image: str,
    mask: str,
    truth: str | None,
    labels: dict[str, str],
    modality: str | None,
) -> None:
    with one_line_errors(case_id):
        _draw(case_id, image, mask, truth, labels, modality)


def _window_controls(
    key: str, image: str, mask: str, truth: str | None, modality: str | None
) -> tuple[float, float]:
    """Preset selector plus manual width / level; returns the ``(lo, hi)`` window."""
    names = [p.name for p in views.window_presets(modality)] + [views.MANUAL]
    cols = st.columns([2, 1, 1], vertical_alignment="bottom")
    choice = cols[0].selectbox(
        f"Window ({modality or 'modality not recorded'})",
        names,
        key=f"{key}_window",
        help="CT windows are width / level in Hounsfield units; percentile windows span those "
        "percentiles of this volume's intensities (MR and uncalibrated images).",
    )
    if choice != views.MANUAL:
        window = _window(image, mask, truth, choice)
        width, level = views.level_of(window)
        cols[1].caption(f"W {width:.0f} / L {level:.0f}")
        st.session_state[f"{key}_manual_width"] = float(round(width, 1))
        st.session_state[f"{key}_manual_level"] = float(round(level, 1))
        return window
    width = cols[1].number_input("Width", 1.0, 1e5, step=10.0, key=f"{key}_manual_width")
    level = cols[2].number_input("Level", -1e5, 1e5, step=10.0, key=f"{key}_manual_level")
    return views.window_from_level(float(width), float(level))


def _draw(
    case_id: int,
    image: str,
    mask: str,
    truth: str | None,
    labels: dict[str, str],
    modality: str | None,
) -> None:
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
    window = _window_controls(key, image, mask, truth, modality)
    aspect = views.plane_aspect(case.spacing, plane)
    shown = [("prediction", case.mask)] + (
        [("ground truth", case.ground_truth)] if case.ground_truth is not None else []
    )
    rows, cols_px = views.aspect_shape(
        views.plane_slice(case.image, plane, index).shape[:2], aspect
    )
    # a slice much wider than tall (a coronal cut of a few slices) gets the full width, stacked
    cols = st.columns(len(shown)) if cols_px < 2 * rows else [st.container() for _ in shown]
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
        f"<span style='color:rgb{colour}'>■</span> {plain(n)}"
        for _, n, colour in views.legend_items(names, visible)
    )
    st.markdown(legend or "No class shown (all toggled off).", unsafe_allow_html=True)
    if case.ground_truth is not None:
        st.caption("Dice per class (prediction vs ground truth)")
        st.dataframe(views.dice_rows(case.mask, case.ground_truth, labels), hide_index=True)
