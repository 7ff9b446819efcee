"""The review store and the signed-in user of this browser session.

The session token lives in ``st.session_state`` (server side, per browser tab); only its hash is
in the database. Every page calls :func:`require_user` first, which stops the page when there is
no valid session, so no page shows data to a visitor who has not logged in.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from medcl.review import auth
from medcl.review.auth import UserInfo
from medcl.review.db import Store

TOKEN_KEY = "session_token"
DB_ENV = "MEDCL_REVIEW_DB"


@st.cache_resource(show_spinner=False)
def _open_store(url: str | None, workspace: str | None) -> Store:
    return Store.open(url, workspace=Path(workspace) if workspace else None)


def get_store() -> Store:
    """The review store: ``$MEDCL_REVIEW_DB`` (a URL) or the workspace's SQLite file."""
    return _open_store(os.environ.get(DB_ENV) or None, os.environ.get("MEDCL_WORKSPACE") or None)


def current_user() -> UserInfo | None:
    """The user of the session token, or None (no token, expired, revoked, deactivated)."""
    token = st.session_state.get(TOKEN_KEY)
    if not token:
        return None
    user = auth.get_session_user(get_store(), str(token))
    if user is None:
        st.session_state.pop(TOKEN_KEY, None)
    return user


def sign_in(token: str) -> None:
    """Remember the token of a successful login."""
    st.session_state[TOKEN_KEY] = token


def sign_out() -> None:
    """Revoke the session in the store and forget every page's state."""
    token = st.session_state.get(TOKEN_KEY)
    if token:
        auth.logout(get_store(), str(token))
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def require_user(*, admin: bool = False) -> UserInfo:
    """The signed-in user; otherwise shows why and stops the page (``st.stop``)."""
    user = current_user()
    if user is None:
        st.warning("Please log in to see this page.")
        st.stop()
    if admin and user.role != "admin":
        st.error("This page is for administrators.")
        st.stop()
    return user
