"""Worklist: every case with its prediction, filtered, sorted by uncertainty, one page at a time."""

from __future__ import annotations

import math

import streamlit as st
from session import get_store, require_user

from medcl.review import service
from medcl.review.safe_text import plain

ALL = "(all)"
SORTS = {
    "most uncertain first": ("uncertainty", True),
    "least uncertain first": ("uncertainty", False),
    "recently updated": ("updated", True),
    "case key": ("case_key", False),
}
PAGE_SIZES = (25, 50, 100)


def _reset_page() -> None:
    st.session_state["worklist_page"] = 1


user = require_user()
store = get_store()
st.title("Worklist")
options = service.filter_options(store, user)
model_names = service.model_display_names(store)
cols = st.columns([1, 1, 1, 1, 2, 1.4])
chosen: dict[str, str | None] = {}
for col, name in zip(cols[:4], ("status", "kind", "model", "site"), strict=True):
    value = col.selectbox(
        name.capitalize(),
        [ALL, *options.get(name, [])],
        key=f"worklist_{name}",
        on_change=_reset_page,
        # option labels are shown as text, never as Markdown
        format_func=(lambda v: model_names.get(v, v)) if name == "model" else str,
    )
    chosen[name] = None if value == ALL else value
search = cols[4].text_input("Search case key", key="worklist_search", on_change=_reset_page)
sort_name = cols[5].selectbox("Sort", list(SORTS), key="worklist_sort", on_change=_reset_page)
sort, descending = SORTS[sort_name]
page_size = int(st.session_state.get("worklist_page_size", PAGE_SIZES[0]))
page_no = int(st.session_state.get("worklist_page", 1))
result = service.list_cases(
    store,
    user,
    status=chosen["status"],
    kind=chosen["kind"],
    model=chosen["model"],
    site=chosen["site"],
    search=search.strip() or None,
    sort=sort,
    descending=descending,
    page=page_no,
    page_size=page_size,
)
n_pages = max(1, math.ceil(result.total / page_size))
if page_no > n_pages:  # filters shrank the list below the current page
    st.session_state["worklist_page"] = n_pages
    st.rerun()

st.caption(
    f"{result.total} case(s); page {page_no} of {n_pages}. Model: the name on its model card. "
    "Uncertainty: 0 (sure) to 1 (unsure); each case page says how its model computes it."
)
if not result.items:
    st.info("No case matches these filters.")
WIDTHS = [2.0, 1.0, 1.2, 2.4, 1.0, 1.4, 1.0, 1.0]
HEADERS = ("case", "kind", "site", "model", "label", "uncertainty", "status", "reviews")
header = st.columns(WIDTHS)
for col, text in zip(header, HEADERS, strict=True):
    col.markdown(f"**{text}**")
for item in result.items:
    row = st.columns(WIDTHS)
    row[0].page_link(
        "app_pages/case.py", label=plain(item.case_key), query_params={"case": str(item.id)}
    )
    row[1].markdown(plain(item.kind))
    row[2].markdown(plain(item.site) or "—")
    row[3].markdown(plain(item.model_name or f"{item.model} {item.model_version}"))
    row[4].markdown(plain(item.label))
    row[5].markdown(f"{item.uncertainty:.2f}")
    row[6].markdown(plain(item.status))
    row[7].markdown(str(item.n_reviews))

nav = st.columns([1, 1, 1, 5])
if nav[0].button("◀ Previous", key="worklist_prev", disabled=page_no <= 1):
    st.session_state["worklist_page"] = page_no - 1
    st.rerun()
if nav[1].button("Next ▶", key="worklist_next", disabled=page_no >= n_pages):
    st.session_state["worklist_page"] = page_no + 1
    st.rerun()
nav[2].selectbox(
    "Per page",
    PAGE_SIZES,
    key="worklist_page_size",
    on_change=_reset_page,
    label_visibility="collapsed",
)
