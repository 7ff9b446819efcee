"""Log in with a username and password; a case deep link is opened after a successful login."""

from __future__ import annotations

import streamlit as st
from session import get_store, sign_in

from medcl.review import auth
from medcl.review.errors import ReviewError
from medcl.review.safe_text import plain

st.title("medcl review: log in")
requested = st.query_params.get("case")
if requested:
    st.info(f"Log in to open case {plain(requested)}.")
with st.form("login_form"):
    username = st.text_input("Username", key="login_username")
    password = st.text_input("Password", type="password", key="login_password")
    submitted = st.form_submit_button("Log in", type="primary")
if submitted:
    try:
        info = auth.authenticate(get_store(), username.strip(), password)
    except ReviewError as exc:  # refused, or the database busy: one line, no traceback
        st.error(plain(exc))
    else:
        sign_in(info.token)
        if requested:
            st.session_state["login_next_case"] = requested
        st.rerun()
