"""Imports under load: bounded transactions keep the app usable during a long import on SQLite,
an import killed midway is finished by running it again, and two imports of the same file at
once both succeed (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from medcl.review.auth import authenticate, create_user
from medcl.review.db import Audit, Case, Prediction, Store
from medcl.review.importer import import_predictions
from medcl.review.service import submit_review

from .helpers import PASSWORD, prediction

ROOT = Path(__file__).parents[2]
WORKER = Path(__file__).with_name("import_worker.py")
N_LINES = 20_000


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _write(path: Path, n: int, prefix: str = "c") -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            rec = prediction(f"{prefix}{i:05d}", uncertainty=(i % 100) / 100)
            fh.write(json.dumps(rec) + "\n")
    return path


def _count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count(Prediction.id))) or 0)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_login_and_review_stay_fast_during_a_long_import(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    user = create_user(store, "alice", PASSWORD)
    seed = _write(tmp_path / "seed.jsonl", 1, prefix="seed")
    import_predictions(store, None, seed)
    with store.session() as session:
        case_id = session.scalars(select(Case.id)).one()
    big = _write(tmp_path / "big.jsonl", N_LINES)
    proc = _spawn("import", store_url, str(big))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 120
    while _count(store) <= 1:  # wait until the import has committed a batch
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.perf_counter()
    session = authenticate(store, "alice", PASSWORD)
    t1 = time.perf_counter()
    submit_review(store, user, case_id, decision="accept", expected_version=0)
    t2 = time.perf_counter()
    during = _count(store)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(
        f"\nsqlite: {N_LINES}-line import {summary['seconds']:.1f} s, peak RSS "
        f"{summary['peak_rss_mib']:.0f} MiB; during it: login {t1 - t0:.2f} s, "
        f"review {t2 - t1:.2f} s ({during - 1} of {N_LINES} imported by then)"
    )
    assert session.user.username == "alice"
    assert during - 1 < N_LINES  # the login and the review ran while the import was going on
    assert t1 - t0 < 2.0 and t2 - t1 < 2.0
    assert (summary["created"], summary["skipped"], summary["errors"]) == (N_LINES, 0, [])
    assert _count(store) == N_LINES + 1


def test_killed_import_is_finished_by_running_it_again(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path / "p.jsonl", 450)
    proc = _spawn("hang", store_url, str(path), "100", "3")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "hanging", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _count(store) == 200  # two whole batches, nothing of the third
    result = import_predictions(store, None, path, batch_size=100)
    assert (result.created, result.skipped, result.errors) == (250, 200, [])
    with store.session() as session:
        assert session.scalar(select(func.count(Case.id))) == 450
        keys = sorted(session.scalars(select(Case.case_key)))
    assert keys == [f"c{i:05d}" for i in range(450)]


def test_two_concurrent_cli_imports_of_one_file_both_succeed(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    n = 3000
    path = _write(tmp_path / "p.jsonl", n)
    cmd = [sys.executable, "-m", "medcl", "review", "import", "--db", store_url, str(path)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "Traceback" not in err
        created, skipped = (int(w) for w in out.split(":")[-1].split()[0:3:2])
        counts.append((created, skipped))
    assert sum(c for c, _ in counts) == n and all(c + s == n for c, s in counts)
    assert _count(store) == n
    with store.session() as session:
        imports = session.scalars(select(Audit).where(Audit.action == "import")).all()
    assert sorted(a.detail["created"] for a in imports) == sorted(c for c, _ in counts)


def test_records_are_consumed_one_batch_at_a_time(store: Store, tmp_path: Path) -> None:
    from medcl.review.importer import import_records, parse_record

    seen: list[int] = []

    def records() -> Any:
        for i in range(25):
            seen.append(_count(store))  # what was committed before record i was read
            yield parse_record(prediction(f"k{i}"), tmp_path)

    result = import_records(store, None, records(), source="gen", batch_size=10)
    assert result.created == 25
    assert seen == [0] * 10 + [10] * 10 + [20] * 5


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_busy_database_is_a_one_line_error(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from medcl.review import db
    from medcl.review.errors import StoreBusyError

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    store = Store.open(store_url, allowed_roots=[tmp_path])
    create_user(store, "alice", PASSWORD)
    holder = sqlite3.connect(str(tmp_path / "review.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    try:
        with pytest.raises(StoreBusyError) as err:
            authenticate(store, "alice", PASSWORD)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(err.value) == db.BUSY_MESSAGE
    assert "\n" not in str(err.value) and "database is locked" not in str(err.value)
    assert authenticate(store, "alice", PASSWORD).user.username == "alice"  # free again
    store.close()


def test_imports_of_one_batch_in_opposite_orders_both_succeed(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Rows go in sorted by key: two imports waiting on each other's rows cannot deadlock."""
    n = 500  # one batch each
    lines = [json.dumps(prediction(f"c{i:05d}")) for i in range(n)]
    forward, backward = tmp_path / "f.jsonl", tmp_path / "b.jsonl"
    forward.write_text("\n".join(lines) + "\n")
    backward.write_text("\n".join(reversed(lines)) + "\n")
    procs = [_spawn("import", store_url, str(p)) for p in (forward, backward)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["created"] for r in results) == n
    assert all(r["created"] + r["skipped"] == n and not r["errors"] for r in results)
    assert _count(store) == n
