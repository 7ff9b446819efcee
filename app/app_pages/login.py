"""Log in with a username and password; a case deep link is opened after a successful login."""

from __future__ import annotations

import streamlit as st
from session import get_store, sign_in

from medcl.review import auth
from medcl.review.errors import AuthError

st.title("medcl review: log in")
requested = st.query_params.get("case")
if requested:
    st.info(f"Log in to open case {requested}.")
with st.form("login_form"):
    username = st.text_input("Username", key="login_username")
    password = st.text_input("Password", type="password", key="login_password")
    submitted = st.form_submit_button("Log in", type="primary")
if submitted:
    try:
        info = auth.authenticate(get_store(), username.strip(), password)
    except AuthError as exc:
        st.error(str(exc))
    else:
        sign_in(info.token)
        if requested:
            st.session_state["login_next_case"] = requested
        st.rerun()
st.page_link("app_pages/status.py", label="Installation status", icon=":material/monitor_heart:")
