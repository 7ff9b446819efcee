"""medcl review app: the router. Pages live in app_pages/, logic in the medcl package."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="medcl", layout="wide")
pages = [st.Page("app_pages/status.py", title="Status", icon=":material/monitor_heart:")]
st.navigation(pages).run()
