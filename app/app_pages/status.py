"""Installation status (administrators only): component versions and the review database."""

from __future__ import annotations

import os

import streamlit as st
from session import require_user

from medcl import __version__
from medcl.review.safe_text import plain
from medcl.status import check_database, package_versions

require_user(admin=True)
st.title(f"medcl {__version__}")
st.caption("Installation status: versions and the review database (no patient data).")
db = check_database(os.environ.get("MEDCL_REVIEW_DB") or None)
(st.success if db.ok else st.error)(f"Database: {plain(db.detail)}")
st.table([{"component": c.name, "version": c.detail} for c in package_versions()])
