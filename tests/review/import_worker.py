"""Child process of tests/review/test_import_load.py (not a test module).

``import URL FILE``: import FILE; prints ``started`` and then a JSON summary (counts, seconds,
peak RSS in MiB). ``hang URL FILE BATCH_SIZE N``: import FILE in batches of BATCH_SIZE but stop
just before the commit of the N-th batch (prints ``hanging``) and sleep until killed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from medcl.review.db import Store
from medcl.review.importer import import_predictions


def run_import(url: str, path: str) -> dict[str, Any]:
    store = Store.open(url, allowed_roots=[])
    print("started", flush=True)
    start = time.perf_counter()
    result = import_predictions(store, None, path)
    return {
        "created": result.created,
        "skipped": result.skipped,
        "errors": result.errors,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def hang(url: str, path: str, batch_size: int, n: int) -> None:
    store = Store.open(url, allowed_roots=[])
    commits = 0

    @event.listens_for(Session, "before_commit")
    def _hang(session: Session) -> None:
        nonlocal commits
        commits += 1
        if commits == n:
            print("hanging", flush=True)
            time.sleep(120)

    import_predictions(store, None, path, batch_size=batch_size)


if __name__ == "__main__":
    mode, url, file = sys.argv[1:4]
    if mode == "import":
        print(json.dumps(run_import(url, file)), flush=True)
    else:
        hang(url, file, int(sys.argv[4]), int(sys.argv[5]))
