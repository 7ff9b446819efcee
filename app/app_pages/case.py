"""One case: its prediction, the kind-specific viewer, the review form and the review history.

Opened by deep link ``/case?case=<id>`` (``st.query_params["case"]``).
"""

from __future__ import annotations

import streamlit as st
from session import get_store, require_user

from app_pages import case_summary, retrieval_view, review_form, slide_view, volume_view
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
    f"{plain(summary.kind)} · site {plain(summary.site) or '—'} · model "
    f"{plain(summary.model_name)} · status **{plain(summary.status)}** · version {detail.version}"
)
case_summary.render_model_card(detail)
case_summary.render_confidence(detail)

# a slide needs the page's width to be read; the form then follows below it
wide = summary.kind == "slide"
viewer, form = (st.container(), st.container()) if wide else st.columns([3, 2])
with viewer:
    render = VIEWERS.get(summary.kind)
    if render is None:
        st.warning(f"No viewer for cases of kind '{plain(summary.kind)}'.")
    else:
        with one_line_errors(case_id):  # a failing viewer must not hide the form
            render(store, user, detail)
with form:
    review_form.render(store, user, detail)
