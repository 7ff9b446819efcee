"""medcl review app: the router. Pages live in app_pages/, logic in the medcl package.

Without a valid session only the login page (and the installation status) exist: a deep link such
as ``/case?case=12`` shows the login page, and after logging in the app opens that case.
"""

from __future__ import annotations

import streamlit as st
from session import current_user, sign_out, write_session_cookie

st.set_page_config(page_title="medcl review", layout="wide")


def _logout() -> None:
    sign_out()
    st.rerun()


status = st.Page("app_pages/status.py", title="Status", icon=":material/monitor_heart:")
case = st.Page("app_pages/case.py", title="Case", icon=":material/assignment:", url_path="case")
PROTECTED = ("worklist", "case", "admin", "logout")  # url paths that need a session
user = current_user()
if user is None:
    # Every protected URL shows the login page (no "page not found"); the menu stays hidden.
    login = [st.Page("app_pages/login.py", title="Log in", icon=":material/login:", default=True)]
    login += [st.Page("app_pages/login.py", title="Log in", url_path=p) for p in PROTECTED]
    pg = st.navigation([*login, status], position="hidden")
else:
    worklist = st.Page(
        "app_pages/worklist.py", title="Worklist", icon=":material/list:", default=True
    )
    pages = [worklist, case]
    if user.role == "admin":
        pages.append(st.Page("app_pages/admin.py", title="Admin", icon=":material/settings:"))
    pages += [
        status,
        st.Page(_logout, title="Log out", icon=":material/logout:", url_path="logout"),
    ]
    pg = st.navigation(pages)
    st.sidebar.caption(f"Signed in as **{user.username}** ({user.role})")
    next_case = st.session_state.pop("login_next_case", None)
    if next_case is not None:
        st.switch_page(case, query_params={"case": str(next_case)})
write_session_cookie()
pg.run()
