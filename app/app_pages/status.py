"""Installation status: component versions and the review database connection (no patient data)."""

from __future__ import annotations

import streamlit as st

from medcl import __version__
from medcl.status import check_database, package_versions

st.title(f"medcl {__version__}")
st.caption("Installation status. Review pages arrive with the review store.")
db = check_database()
(st.success if db.ok else st.error)(f"Database: {db.detail}")
st.table([{"component": c.name, "version": c.detail} for c in package_versions()])
