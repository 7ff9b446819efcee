"""One case: its prediction, the kind-specific viewer, the review form and the review history.

Opened by deep link ``/case?case=<id>`` (``st.query_params["case"]``).
"""

from __future__ import annotations

import streamlit as st
from session import get_store, require_user

from app_pages import retrieval_view, review_form, slide_view, volume_view
from app_pages.one_line import one_line_errors
from medcl.review import service
from medcl.review.errors import NotFoundError
from medcl.review.safe_text import plain

VIEWERS = {
    "volume": volume_view.render,
    "slide": slide_view.render,
    "retrieval": retrieval_view.render,
}

user = require_user()
store = get_store()
raw = st.query_params.get("case", "")
if not raw:
    st.title("Case")
    st.info("Open a case from the worklist.")
    st.page_link("app_pages/worklist.py", label="Go to the worklist", icon=":material/list:")
    st.stop()
try:
    case_id = int(raw)
except ValueError:
    st.error(f"'{plain(raw)}' is not a case id.")
    st.stop()
try:
    detail = service.get_case(store, user, case_id)
except NotFoundError as exc:
    st.error(plain(exc))
    st.stop()

summary = detail.summary
st.title(plain(summary.case_key))
st.caption(
    f"{plain(summary.kind)} · site {plain(summary.site) or '—'} · model {plain(summary.model)} "
    f"{plain(summary.model_version)} · status **{plain(summary.status)}** · "
    f"version {detail.version}"
)
metrics = st.columns(3)
metrics[0].metric("Predicted label", plain(summary.label))
metrics[1].metric("Uncertainty", f"{summary.uncertainty:.2f}")
metrics[2].metric("Reviews", summary.n_reviews)
if detail.scores:
    with st.expander("Scores", expanded=False):
        st.dataframe(
            [
                {"label": k, "score": round(float(v), 4)}
                for k, v in sorted(detail.scores.items(), key=lambda kv: -float(kv[1]))
            ],
            hide_index=True,
        )

viewer, form = st.columns([3, 2])
with viewer:
    render = VIEWERS.get(summary.kind)
    if render is None:
        st.warning(f"No viewer for cases of kind '{plain(summary.kind)}'.")
    else:
        with one_line_errors(case_id):  # a failing viewer must not hide the form
            render(store, user, detail)
with form:
    review_form.render(store, user, detail)
