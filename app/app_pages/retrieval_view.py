"""Viewer of a retrieval case: the query image, the LMM answer and the retrieved demonstrations.

A tie in the demonstrations' vote is shown as a tie. The true label is shown only when the
service hands it over (not to a reviewer who reviews blind and has not submitted yet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from medcl.errors import MedclError
from medcl.review import service, views
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail

IMAGE_SIZE = 384


@st.cache_data(max_entries=64, show_spinner=False)
def _image(path: str, max_size: int) -> np.ndarray:
    return views.load_rgb(Path(path), max_size)


def render(store: Store, user: UserInfo, detail: CaseDetail) -> None:
    """Draw the retrieval viewer of ``detail`` (artifacts query, demonstrations, lmm_answer)."""
    art = detail.artifacts
    demos = list(art.get("demonstrations") or [])
    left, right = st.columns([1, 2])
    left.image(
        _image(str(service.artifact_path(store, detail, "query")), IMAGE_SIZE),
        caption="Query image",
        width="stretch",
    )
    tie = views.vote_tie(detail.summary.label, art)
    if tie:
        right.warning(
            f"Tie in the demonstrations' vote: {plain(' / '.join(tie))} have as many votes "
            "each; the model does not pick one."
        )
    truth = "hidden until you submit your review" if detail.blind else None
    facts = {
        "true label": truth or art.get("true_label") or "unknown",
        "LMM answer": art.get("lmm_answer") or "—",
        "selector": art.get("selector") or "—",
    }
    right.markdown("\n".join(f"- **{k}**: {plain(v)}" for k, v in facts.items()))
    right.caption(f"{len(demos)} retrieved demonstrations")
    right.dataframe(views.demonstration_rows(demos, art.get("true_label")), hide_index=True)
    if not demos:
        return
    order = sorted(range(len(demos)), key=lambda i: -float(demos[i].get("similarity") or 0.0))
    per_row = 5
    for start in range(0, len(order), per_row):
        cols = st.columns(per_row)
        for col, i in zip(cols, order[start : start + per_row], strict=False):
            demo = demos[i]
            try:
                path = service.artifact_path(store, detail, "demonstrations", i)
                col.image(
                    _image(str(path), 192),
                    width="stretch",
                    caption=f"{plain(demo.get('label'))} · "
                    f"{float(demo.get('similarity') or 0):.2f}",
                )
            except MedclError as exc:
                col.warning(plain(exc))
