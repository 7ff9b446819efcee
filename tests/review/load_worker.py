"""Child process of tests/review/test_load.py (not a test module).

``submit URL USERNAME GO_FILE``: wait for GO_FILE, then review every case once (retrying with the
fresh version on conflict); prints a JSON summary. ``crash URL USERNAME CASE_ID``: submit one
review but stop just before its commit (the review row inserted), print ``inserted N`` and sleep
until killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from medcl.review.auth import UserInfo
from medcl.review.db import Case, Review, Store, User
from medcl.review.errors import ConflictError
from medcl.review.service import submit_review


def _user(store: Store, username: str) -> UserInfo:
    with store.session() as session:
        row = session.scalars(select(User).where(User.username == username)).one()
        return UserInfo(row.id, row.username, row.role, row.active)


def submit_all(url: str, username: str, go: Path) -> dict[str, Any]:
    store = Store.open(url, allowed_roots=[])
    user = _user(store, username)
    with store.session() as session:
        cases = list(session.execute(select(Case.id, Case.case_key, Case.version)).all())
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    conflicts = 0
    for case_id, key, version in cases:
        expected = version
        while True:
            try:
                submit_review(
                    store,
                    user,
                    case_id,
                    decision="correct",
                    corrected_label=username,
                    comment=f"{username}:{key}",
                    expected_version=expected,
                )
                break
            except ConflictError as err:
                conflicts += 1
                expected = err.current.version
    return {"user": username, "submitted": len(cases), "conflicts": conflicts}


def crash(url: str, username: str, case_id: int) -> None:
    store = Store.open(url, allowed_roots=[])
    user = _user(store, username)

    @event.listens_for(Session, "before_commit")
    def _hang(session: Session) -> None:
        if not any(isinstance(obj, Review) for obj in session.identity_map.values()):
            return
        n = session.scalar(select(func.count(Review.id)).where(Review.case_id == case_id))
        print(f"inserted {n}", flush=True)
        time.sleep(120)

    submit_review(store, user, case_id, decision="reject", expected_version=0)


if __name__ == "__main__":
    mode, url, name = sys.argv[1:4]
    if mode == "submit":
        print(json.dumps(submit_all(url, name, Path(sys.argv[4]))), flush=True)
    else:
        crash(url, name, int(sys.argv[4]))
