"""Installation status: component versions and the review database connection (no patient data)."""

from __future__ import annotations

import os

import streamlit as st

from medcl import __version__
from medcl.status import check_database, package_versions

st.title(f"medcl {__version__}")
st.caption("Installation status: versions and the review database (no patient data).")
db = check_database(os.environ.get("MEDCL_REVIEW_DB") or None)
(st.success if db.ok else st.error)(f"Database: {db.detail}")
st.table([{"component": c.name, "version": c.detail} for c in package_versions()])
