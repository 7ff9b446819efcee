"""Load and crash safety: two processes reviewing the same cases lose nothing; a process killed
mid-review leaves no partial review. Both on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from medcl.review.auth import create_user, system_user
from medcl.review.db import Case, Review, Store, User
from medcl.review.importer import import_records, parse_record
from medcl.review.labels import add_extra_label
from medcl.review.service import submit_review

from .helpers import PASSWORD, prediction

WORKER = Path(__file__).with_name("load_worker.py")
N_CASES = 500


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _seed(store: Store, tmp_path: Path, n: int) -> None:
    records = [parse_record(prediction(f"c{i:04d}"), tmp_path) for i in range(n)]
    assert import_records(store, None, records, source="seed").created == n


def test_two_processes_submit_concurrently(store: Store, store_url: str, tmp_path: Path) -> None:
    _seed(store, tmp_path, N_CASES)
    for name in ("w1", "w2"):
        create_user(store, name, PASSWORD)
        add_extra_label(store, system_user(), "m", name)  # each worker corrects to its name
    go = tmp_path / "go"
    procs = [_spawn("submit", store_url, name, str(go)) for name in ("w1", "w2")]
    for p in procs:  # both loaded the cases (all at version 0) before either starts
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    go.touch()
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.perf_counter() - start
    print(
        f"\n{store.engine.dialect.name}: 2 x {N_CASES} reviews in {elapsed:.1f} s, "
        f"conflicts retried: {[s['conflicts'] for s in summaries]}"
    )
    assert [s["submitted"] for s in summaries] == [N_CASES, N_CASES]
    with store.session() as session:
        cases = session.scalars(select(Case)).all()
        rows = session.execute(
            select(Review, User.username, Case.case_key)
            .join(User, User.id == Review.user_id)
            .join(Case, Case.id == Review.case_id)
        ).all()
    assert len(rows) == 2 * N_CASES  # none lost
    assert {(c.version, c.status) for c in cases} == {(2, "corrected")}
    by_case: dict[str, list[tuple[int, str]]] = {}
    for review, username, key in rows:
        assert review.comment == f"{username}:{key}" and review.corrected_label == username
        by_case.setdefault(key, []).append((review.case_version, username))
    # each case: one review from each worker, at versions 0 and 1
    for reviews in by_case.values():
        assert sorted(v for v, _ in reviews) == [0, 1]
        assert sorted(u for _, u in reviews) == ["w1", "w2"]
    assert len(by_case) == N_CASES


def test_killed_mid_review_leaves_nothing(store: Store, store_url: str, tmp_path: Path) -> None:
    _seed(store, tmp_path, 1)
    user = create_user(store, "w1", PASSWORD)
    with store.session() as session:
        case_id = session.scalars(select(Case.id)).one()
    proc = _spawn("crash", store_url, "w1", str(case_id))
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "inserted 1", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with store.session() as session:
        case = session.get(Case, case_id)
        assert case is not None and (case.version, case.status) == (0, "pending")
        assert session.scalars(select(Review)).all() == []
    # the store still works: the same version can be reviewed now
    saved = submit_review(store, user, case_id, decision="accept", expected_version=0)
    with store.session() as session:
        assert [r.id for r in session.scalars(select(Review))] == [saved.id]
