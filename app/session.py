"""The review store and the signed-in user of this browser session.

The session token lives in ``st.session_state`` (server side) and, so that a reload keeps the
login, in a ``SameSite=Strict`` cookie of this site that expires with the session; only the
token's hash is in the database, and logging out revokes it there (a copied cookie is then
worthless) and clears the cookie. Every page calls :func:`require_user` first, which stops the
page when there is no valid session, so no page shows data to a visitor who has not logged in.
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
COOKIE = "medcl_session"
_COOKIE_WRITE = "_session_cookie_write"  # pending cookie update: a token, or "" to clear
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@st.cache_resource(show_spinner=False)
def _open_store(url: str | None, workspace: str | None) -> Store:
    return Store.open(url, workspace=Path(workspace) if workspace else None)


def get_store() -> Store:
    """The review store: ``$MEDCL_REVIEW_DB`` (a URL) or the workspace's SQLite file."""
    return _open_store(os.environ.get(DB_ENV) or None, os.environ.get("MEDCL_WORKSPACE") or None)


def _cookie_token() -> str | None:
    """The session token from this browser's cookie (after a reload), if it looks like one."""
    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no browser context (AppTest, bare script run)
        return None
    if not value or len(value) > 128 or not set(value) <= _TOKEN_CHARS:
        return None
    return str(value)


def current_user() -> UserInfo | None:
    """The user of the session token, or None (no token, expired, revoked, deactivated)."""
    token = st.session_state.get(TOKEN_KEY)
    if not token and st.session_state.get(_COOKIE_WRITE) != "":  # "": logged out here
        token = _cookie_token()
        if token:
            st.session_state[TOKEN_KEY] = token
    if not token:
        return None
    user = auth.get_session_user(get_store(), str(token))
    if user is None:
        st.session_state.pop(TOKEN_KEY, None)
    return user


def sign_in(token: str) -> None:
    """Remember the token of a successful login (and put it in the cookie, see module doc)."""
    st.session_state[TOKEN_KEY] = token
    st.session_state[_COOKIE_WRITE] = token


def sign_out() -> None:
    """Revoke the session in the store, clear the cookie and forget every page's state."""
    token = st.session_state.get(TOKEN_KEY)
    if token:
        auth.logout(get_store(), str(token))
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state[_COOKIE_WRITE] = ""


def write_session_cookie(max_age_s: int = 8 * 3600) -> None:
    """Send a pending cookie update to the browser (call once per run, after the navigation).

    Streamlit cannot set cookies from the server, so a zero-height component sets it on the
    app's own document. The token only ever holds URL-safe characters (checked).
    """
    if _COOKIE_WRITE not in st.session_state:
        return
    import streamlit.components.v1 as components

    value = str(st.session_state[_COOKIE_WRITE])
    if value and not set(value) <= _TOKEN_CHARS:
        return
    age = max_age_s if value else 0
    components.html(
        "<script>"
        "const secure = parent.location.protocol === 'https:' ? '; Secure' : '';"
        f"parent.document.cookie = '{COOKIE}={value}; Max-Age={age}; Path=/; "
        "SameSite=Strict' + secure;"
        "</script>",
        height=0,
    )
    if value:
        del st.session_state[_COOKIE_WRITE]  # a cleared cookie stays marked: no re-login from it


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
