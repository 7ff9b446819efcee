"""One case: its prediction, the kind-specific viewer, the review form and the review history.

Opened by deep link ``/case?case=<id>`` (``st.query_params["case"]``).
"""

from __future__ import annotations

import streamlit as st
from session import get_store, require_user

from app_pages import retrieval_view, review_form, slide_view, volume_view
from medcl.errors import MedclError
from medcl.review import service
from medcl.review.errors import NotFoundError

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
    st.error(f"'{raw}' is not a case id.")
    st.stop()
try:
    detail = service.get_case(store, user, case_id)
except NotFoundError as exc:
    st.error(str(exc))
    st.stop()

summary = detail.summary
st.title(summary.case_key)
st.caption(
    f"{summary.kind} · site {summary.site or '—'} · model {summary.model} "
    f"{summary.model_version} · status **{summary.status}** · version {detail.version}"
)
metrics = st.columns(3)
metrics[0].metric("Predicted label", summary.label)
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
        st.warning(f"No viewer for cases of kind '{summary.kind}'.")
    else:
        try:
            render(store, user, detail)
        except MedclError as exc:  # a missing or refused artifact must not hide the form
            st.error(f"Cannot show this case's images: {exc}")
with form:
    review_form.render(store, user, detail)
