"""Administration: users, the audit log, exports, and importing a predictions file."""

from __future__ import annotations

import streamlit as st
from session import get_store, require_user

from app_pages import review_settings
from medcl.errors import MedclError
from medcl.review import auth, service
from medcl.review.importer import import_records
from medcl.review.safe_text import plain

MAX_UPLOAD_MB = 5
AUDIT_REFRESH_S = 5
ANY = "(any)"
ACTIONS = (
    "login",
    "login_failed",
    "lockout",
    "logout",
    "view_case",
    "review",
    "import",
    "export",
    "add_user",
    "set_active",
)

admin = require_user(admin=True)
store = get_store()
st.title("Administration")
users_tab, audit_tab, export_tab, import_tab = st.tabs(["Users", "Audit log", "Export", "Import"])

with users_tab:
    users = auth.list_users(store, admin)
    st.dataframe(
        [{"username": u.username, "role": u.role, "active": u.active} for u in users],
        hide_index=True,
    )
    with st.form("admin_add_user", clear_on_submit=True):
        st.markdown("**Add a user**")
        cols = st.columns(3)
        new_name = cols[0].text_input("Username", key="admin_new_username")
        new_password = cols[1].text_input(
            "Password (8+ characters)", type="password", key="admin_new_password"
        )
        new_role = cols[2].selectbox("Role", ["reviewer", "admin"], key="admin_new_role")
        if st.form_submit_button("Add user"):
            try:
                auth.create_user(store, new_name.strip(), new_password, role=new_role, actor=admin)
            except MedclError as exc:
                st.error(plain(exc))
            else:
                st.success(f"User {plain(new_name.strip())} added.")
    others = [u.username for u in users if u.username != admin.username]
    if others:
        pick, on, off = st.columns([2, 1, 1])
        target = pick.selectbox("User", others, key="admin_target_user")
        for col, label, active in ((on, "Activate", True), (off, "Deactivate", False)):
            if col.button(label, key=f"admin_{label.lower()}"):
                try:
                    auth.set_active(store, admin, target, active)
                except MedclError as exc:
                    st.error(plain(exc))
                else:
                    st.rerun()


@st.fragment(run_every=AUDIT_REFRESH_S)
def _audit() -> None:
    """The audit log, re-read every :data:`AUDIT_REFRESH_S` seconds (an export made in the next
    tab shows up without a reload)."""
    who_col, action_col, limit_col, again_col = st.columns(
        [2, 2, 1, 1], vertical_alignment="bottom"
    )
    who = who_col.text_input("Username", key="admin_audit_user")
    action = action_col.selectbox("Action", [ANY, *ACTIONS], key="admin_audit_action")
    limit = int(limit_col.number_input("Rows", 10, 5000, 200, 10, key="admin_audit_limit"))
    again_col.button("Refresh", key="admin_audit_refresh", icon=":material/refresh:")
    entries = service.audit_log(
        store,
        admin,
        limit=limit,
        username=who.strip() or None,
        action=None if action == ANY else action,
    )
    st.caption(f"{len(entries)} newest entries; refreshed every {AUDIT_REFRESH_S} s.")
    st.dataframe(
        [
            {
                "time": str(e.time)[:19],
                "user": e.username,
                "action": e.action,
                "case": e.case_id,
                "detail": e.detail,
            }
            for e in entries
        ],
        hide_index=True,
        column_config={"detail": st.column_config.JsonColumn("detail", width="large")},
    )


with audit_tab:
    _audit()

with export_tab:
    st.caption("Exports are written to the audit log when downloaded.")
    cols = st.columns(3)
    cols[0].download_button(
        "Reviews (CSV)",
        lambda: service.export_reviews(store, admin, "csv"),
        "reviews.csv",
        "text/csv",
        key="admin_export_csv",
        on_click="ignore",
    )
    cols[1].download_button(
        "Reviews (JSON)",
        lambda: service.export_reviews(store, admin, "json"),
        "reviews.json",
        "application/json",
        key="admin_export_json",
        on_click="ignore",
    )
    cols[2].download_button(
        "Corrections manifest (CSV)",
        lambda: service.export_corrections_manifest(store, admin),
        "corrections.csv",
        "text/csv",
        key="admin_export_manifest",
        on_click="ignore",
    )

with import_tab:
    st.caption(
        f"A predictions JSONL file (at most {MAX_UPLOAD_MB} MB). Relative artifact paths are "
        "read from the workspace; every artifact must lie inside the workspace or the data root."
    )
    upload = st.file_uploader(
        "Predictions file",
        type=["jsonl", "json"],
        key="admin_upload",
        max_upload_size=MAX_UPLOAD_MB,
    )
    if upload is not None and st.button("Import", key="admin_import", type="primary"):
        try:
            records = service.validate_upload(
                upload.name, upload.getvalue(), max_bytes=MAX_UPLOAD_MB * 1024 * 1024
            )
            result = import_records(store, admin, records, source=f"upload:{upload.name}")
        except MedclError as exc:
            st.error(plain(exc))
        else:
            st.success(
                f"{len(records)} record(s) read: {result.created} created, "
                f"{result.skipped} already present, {len(result.errors)} error(s)."
            )
            for problem in result.errors:
                st.warning(plain(problem))

# review workflow settings (blind review, correction labels): app_pages/review_settings.py
with st.expander("Review settings: blind review and correction labels", expanded=False):
    review_settings.render(store, admin)
