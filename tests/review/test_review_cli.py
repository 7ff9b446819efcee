"""``medcl review`` commands: add-user, users, import, export, db upgrade."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from medcl.cli import review as review_cli
from medcl.errors import MedclError
from medcl.review.auth import authenticate, system_user
from medcl.review.db import Store
from medcl.review.service import list_cases, submit_review

from .helpers import PASSWORD, prediction


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Parse and dispatch like ``medcl`` does (the group may not be wired in yet)."""
    parser = argparse.ArgumentParser(prog="medcl")
    review_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except MedclError as exc:
        print(f"medcl: error: {exc}", file=__import__("sys").stderr)
        code = exc.exit_code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_user_and_list(
    store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REVIEW_PW", PASSWORD)
    code, out, _ = run(
        [
            "review",
            "add-user",
            "root",
            "--role",
            "admin",
            "--password-env",
            "REVIEW_PW",
            "--db",
            store_url,
        ],
        capsys,
    )
    assert (code, out) == (0, "added admin 'root'\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("another password\n"))
    code, out, _ = run(
        ["review", "add-user", "alice", "--password-stdin", "--db", store_url], capsys
    )
    assert (code, out) == (0, "added reviewer 'alice'\n")
    code, out, _ = run(["review", "users", "--db", store_url], capsys)
    assert out == "alice\treviewer\tactive\nroot\tadmin\tactive\n"
    store = Store.open(store_url)
    assert authenticate(store, "alice", "another password").user.role == "reviewer"
    code, _, err = run(
        ["review", "add-user", "alice", "--password-env", "REVIEW_PW", "--db", store_url], capsys
    )
    assert (code, err) == (2, "medcl: error: user 'alice' already exists\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt
    code, _, err = run(["review", "add-user", "bob", "--db", store_url], capsys)
    assert err == "medcl: error: no password: pass --password-stdin or --password-env VAR\n"
    store.close()


def test_import_export_upgrade(
    store_url: str,
    tmp_path: Path,
    write_predictions: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_predictions([prediction("a"), "oops", prediction("b", "slide")])
    code, out, err = run(["review", "import", str(path), "--db", store_url], capsys)
    assert code == 1  # a malformed line makes the exit code non-zero; good lines imported
    assert out == f"{path}: 2 created, 0 skipped, 1 errors\n"
    assert err.startswith(f"{path}:2: not valid JSON")
    code, out, _ = run(["review", "import", str(path), "--db", store_url], capsys)
    assert out == f"{path}: 0 created, 2 skipped, 1 errors\n"

    store = Store.open(store_url, allowed_roots=[tmp_path])
    from medcl.review.auth import create_user

    alice = create_user(store, "alice", PASSWORD)
    case = list_cases(store, system_user(), kind="retrieval").items[0]
    submit_review(
        store, alice, case.id, decision="correct", corrected_label="mel", expected_version=0
    )
    for fmt in ("csv", "json", "manifest"):
        out_file = tmp_path / "exports" / f"out.{fmt}"
        code, out, _ = run(
            ["review", "export", "--format", fmt, "--out", str(out_file), "--db", store_url], capsys
        )
        assert (code, out) == (0, f"wrote {out_file}\n")
    rows = json.loads((tmp_path / "exports" / "out.json").read_text())
    assert [(r["case_key"], r["decision"], r["corrected_label"]) for r in rows] == [
        ("a", "correct", "mel")
    ]
    assert (tmp_path / "exports" / "out.manifest").read_text() == (
        f"path,label,domain,group,case_key\n{tmp_path / 'a.png'},mel,default,a,a\n"
    )
    code, out, _ = run(["review", "db", "upgrade", "--db", store_url], capsys)
    assert code == 0 and out.endswith(": schema up to date\n")
    store.close()


def test_default_db_from_env_and_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDCL_REVIEW_DB", raising=False)
    code, _, _ = run(["review", "db", "upgrade", "--workspace", str(tmp_path / "ws")], capsys)
    assert code == 0 and (tmp_path / "ws" / "review" / "review.db").is_file()
    monkeypatch.setenv("MEDCL_REVIEW_DB", f"sqlite:///{tmp_path / 'env.db'}")
    code, out, _ = run(["review", "users"], capsys)
    assert (code, out) == (0, "") and (tmp_path / "env.db").is_file()
