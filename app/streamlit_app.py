"""medcl review app: the router. Pages live in app_pages/, logic in the medcl package.

Without a valid session only the login page exists: a deep link such as ``/case?case=12`` shows the
login page, and after logging in the app opens that case. The installation status is for admins.
A database error that reaches the router (e.g. SQLite busy beyond its timeout) is shown as one
line, never as a traceback.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import streamlit as st
from session import current_user, sign_out, write_session_cookie
from sqlalchemy.exc import SQLAlchemyError

from medcl.errors import MedclError
from medcl.review.safe_text import plain

logger = logging.getLogger("medcl.app")
DB_UNAVAILABLE = "the review database cannot be used right now; please try again in a moment"

st.set_page_config(page_title="medcl review", layout="wide")


def _show_error(exc: Exception) -> NoReturn:
    """One line for the user (details in the server log), then stop the page."""
    if isinstance(exc, MedclError):
        st.error(plain(exc))
    else:
        logger.warning("review database error: %s", str(exc).splitlines()[0] if str(exc) else exc)
        st.error(DB_UNAVAILABLE)
    st.stop()


def _logout() -> None:
    sign_out()
    st.rerun()


status = st.Page("app_pages/status.py", title="Status", icon=":material/monitor_heart:")
case = st.Page("app_pages/case.py", title="Case", icon=":material/assignment:", url_path="case")
PROTECTED = ("worklist", "case", "admin", "status", "logout")  # url paths that need a session
try:
    user = current_user()
except (MedclError, SQLAlchemyError) as exc:
    _show_error(exc)
if user is None:
    # Every protected URL shows the login page (no "page not found"); the menu stays hidden.
    login = [st.Page("app_pages/login.py", title="Log in", icon=":material/login:", default=True)]
    login += [st.Page("app_pages/login.py", title="Log in", url_path=p) for p in PROTECTED]
    pg = st.navigation(login, position="hidden")
else:
    worklist = st.Page(
        "app_pages/worklist.py", title="Worklist", icon=":material/list:", default=True
    )
    pages = [worklist, case]
    if user.role == "admin":
        pages.append(st.Page("app_pages/admin.py", title="Admin", icon=":material/settings:"))
        pages.append(status)
    pages.append(st.Page(_logout, title="Log out", icon=":material/logout:", url_path="logout"))
    pg = st.navigation(pages)
    st.sidebar.caption(f"Signed in as **{plain(user.username)}** ({plain(user.role)})")
    next_case = st.session_state.pop("login_next_case", None)
    if next_case is not None:
        st.switch_page(case, query_params={"case": str(next_case)})
write_session_cookie()
try:
    pg.run()
except (MedclError, SQLAlchemyError) as exc:
    _show_error(exc)
