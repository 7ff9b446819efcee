"""App hardening (issue 14): a busy database is one line, the status page is for admins and
redacts secrets, Streamlit's telemetry and Deploy button are off, viewer failures are one line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from review_seed import ADMIN, REVIEWER, Seeded
from streamlit.testing.v1 import AppTest

from medcl.review import db, service
from medcl.review.db import Store
from medcl.review.safe_text import plain

APP_DIR = Path(__file__).resolve().parents[2] / "app"
APP = str(APP_DIR / "streamlit_app.py")


def _app(user: tuple[str, str] | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    if user is not None:
        at.text_input(key="login_username").set_value(user[0])
        at.text_input(key="login_password").set_value(user[1])
        at.button[0].click()
        at.run()
    return at


def test_login_while_the_database_is_locked_is_one_line(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    at = _app(None)
    holder = sqlite3.connect(str(seeded.root / "review.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        at.text_input(key="login_username").set_value(REVIEWER[0])
        at.text_input(key="login_password").set_value(REVIEWER[1])
        at.button[0].click()
        at.run()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not at.exception
    assert [e.value for e in at.error] == [plain(db.BUSY_MESSAGE)]
    assert "session_token" not in at.session_state


def test_status_page_is_for_admins_only(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    logged_out = AppTest.from_file(APP, default_timeout=30).run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        logged_out.switch_page("app_pages/status.py")
    assert not [e for e in logged_out.get("page_link") if "status" in str(e.proto.page)]
    reviewer = _app(REVIEWER)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        reviewer.switch_page("app_pages/status.py")
    # run directly with a reviewer's session: refused
    monkeypatch.syspath_prepend(str(APP_DIR))
    direct = AppTest.from_file(str(APP_DIR / "app_pages" / "status.py"), default_timeout=30)
    direct.session_state["session_token"] = reviewer.session_state["session_token"]
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for administrators."]
    assert not direct.title and not direct.table
    admin = _app(ADMIN)
    admin.switch_page("app_pages/status.py").run()
    assert not admin.exception and admin.title[0].value.startswith("medcl ")
    assert next(s.value for s in admin.success).startswith(f"Database: {plain('sqlite:///')}")


def test_status_check_redacts_passwords() -> None:
    from medcl.status import check_database

    secret = "s3cret-Pw"
    bad = (
        f"postgresql+psycopg://medcl:{secret}@/review?host=/nonexistent-medcl-socket"
        f"&user=postgres&password={secret}&sslpassword={secret}"
    )
    check = check_database(bad, timeout_s=1)
    assert not check.ok and check.detail.startswith("postgresql+psycopg://medcl:***@/review?")
    assert secret not in check.detail and "\n" not in check.detail
    assert "password=***" in check.detail and "sslpassword=***" in check.detail


def test_redact_url_uses_sqlalchemy_and_masks_query_secrets() -> None:
    from sqlalchemy.engine import make_url

    url = "postgresql+psycopg://u:p%40ss@db:5432/review?sslmode=require&password=qq&user=x"
    shown = db.redact_url(url)
    assert "p@ss" not in shown and "p%40ss" not in shown and "qq" not in shown
    parsed = make_url(shown)
    assert parsed.password == "***" and parsed.query["password"] == "***"
    assert parsed.query["sslmode"] == "require" and parsed.query["user"] == "x"
    assert (parsed.host, parsed.port, parsed.database) == ("db", 5432, "review")
    assert db.redact_url("sqlite:////tmp/r.db") == "sqlite:////tmp/r.db"
    assert db.redact_url("::not a url::") == "<database URL that cannot be parsed>"
    assert Store.open("sqlite://", allowed_roots=[]).url == "sqlite://"


def test_streamlit_config_turns_off_telemetry_and_deploy_button() -> None:
    """The config next to the app is what `streamlit run app/streamlit_app.py` reads (from any
    working directory), as `medcl demo` and the Docker image start it."""
    code = (
        "import json, sys\n"
        "from streamlit import config\n"
        "config._main_script_path = sys.argv[1]\n"
        "config.get_config_options(force_reparse=True)\n"
        "print(json.dumps({k: config.get_option(k) for k in ("
        "'browser.gatherUsageStats', 'client.toolbarMode', 'client.showErrorDetails')}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, APP],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "browser.gatherUsageStats": False,
        "client.toolbarMode": "minimal",
        "client.showErrorDetails": "none",
    }


def test_volume_case_with_bad_labels_is_one_line(seeded: Seeded) -> None:
    store = Store.open(seeded.url, workspace=seeded.root)
    case_id = seeded.case_ids["volume"]
    with store.session(write=True) as session:
        from medcl.review.db import Prediction

        pred = session.query(Prediction).filter(Prediction.case_id == case_id).one()
        pred.artifacts = {**pred.artifacts, "labels": {"liver": "1"}}  # a bad key
    store.close()
    at = _app(REVIEWER)
    at.query_params["case"] = str(case_id)
    at.switch_page("app_pages/case.py").run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert "labels" in message and "is not a class number" in message
    assert "\n" not in message and "Traceback" not in message and str(seeded.root) not in message
    assert any(b.label == "Submit review" for b in at.button)  # the form is still there
    assert service  # the review service stays importable alongside the app


def test_unexpected_viewer_failure_is_one_line(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medcl.review import views

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError(f"boom in {seeded.root}/secret/path")

    monkeypatch.setattr(views, "load_volume_case", broken)
    at = _app(REVIEWER)
    at.query_params["case"] = str(seeded.case_ids["volume"])
    at.switch_page("app_pages/case.py").run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert "viewer failed" in message and str(seeded.root) not in message


def test_missing_artifact_names_the_file_not_the_server_path(seeded: Seeded) -> None:
    (seeded.root / "artifacts" / "ct_pred.nii.gz").unlink()
    at = _app(REVIEWER)
    at.query_params["case"] = str(seeded.case_ids["volume"])
    at.switch_page("app_pages/case.py").run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert message == "Cannot show this case's images: " + plain(
        "ct_pred.nii.gz: artifact file not found"
    )
