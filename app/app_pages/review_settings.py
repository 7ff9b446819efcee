"""Admin controls of the review workflow (used by the admin page, not a page itself): blind
review on or off, and the correction labels added to a model's class map. Each change is made by
the service, which checks the admin and writes the audit entry."""

from __future__ import annotations

import streamlit as st

from medcl.errors import MedclError
from medcl.review import service
from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.safe_text import plain


def _set_blind(store: Store, admin: UserInfo) -> None:
    on = bool(st.session_state.get("admin_blind_review"))
    try:
        service.set_blind_review(store, admin, on)
    except MedclError as exc:
        st.session_state["admin_settings_message"] = ("error", plain(exc))
    else:
        state = "on" if on else "off"
        st.session_state["admin_settings_message"] = ("success", f"Blind review is {state}.")


def render(store: Store, admin: UserInfo) -> None:
    """Draw the blind-review switch and the added correction labels."""
    message = st.session_state.pop("admin_settings_message", None)
    if message is not None:
        (st.success if message[0] == "success" else st.error)(message[1])
    st.toggle(
        "Blind review",
        value=service.get_blind_review(store),
        key="admin_blind_review",
        on_change=_set_blind,
        args=(store, admin),
        help="Reviewers do not see the ground truth or other reviewers' decisions until they "
        "have submitted their own review of the case. Admins always see everything.",
    )
    st.markdown("**Correction labels added to a model's class map**")
    added = service.list_extra_labels(store, admin)
    if added:
        st.dataframe(
            [
                {"model": a.model, "label": a.label, "added by": a.added_by, "added": a.created}
                for a in added
            ],
            hide_index=True,
        )
    else:
        st.caption("None: corrections use the models' own classes.")
    models = service.filter_options(store, admin).get("model", [])
    if not models:
        return
    with st.form("admin_add_label", clear_on_submit=True):
        cols = st.columns(2)
        model = cols[0].selectbox("Model", models, key="admin_label_model")
        label = cols[1].text_input("Label", key="admin_label_text")
        if st.form_submit_button("Add label"):
            try:
                info = service.add_extra_label(store, admin, str(model), label)
            except MedclError as exc:
                st.error(plain(exc))
            else:
                st.success(f"Label {plain(info.label)} added to {plain(info.model)}.")
