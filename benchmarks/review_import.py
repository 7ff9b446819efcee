"""Benchmark: a long import and the app's logins and reviews at the same time, on SQLite.

Usage::

    python benchmarks/review_import.py                    # 20,000 lines, 2 repeats
    python benchmarks/review_import.py --lines 5000 --repeats 1

A child process imports a ``predictions.jsonl`` of ``--lines`` lines into a fresh SQLite store
while this process logs in and saves a review in a loop (as the app would for a user). Two
importers, interleaved, same file: medcl's batched import (transactions of ``BATCH_SIZE``
records) and a reference with the same code in one transaction (``batch_size`` = all lines: how
the importer worked before). Printed per run: import time, the importer's peak RSS, and the
slowest / median login and review during the import, and how many failed.

Acceptance (issue 14): no login blocked more than 2 s during a 20k-line import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medcl.review import auth
from medcl.review.db import Case, Store
from medcl.review.errors import ReviewError
from medcl.review.importer import BATCH_SIZE, import_predictions
from medcl.review.service import submit_review

ROOT = Path(__file__).resolve().parents[1]
USER = ("bench", "bench-password-123")
CHILD = """
import json, resource, sys, time
from medcl.review.db import Store
from medcl.review.importer import import_predictions
store = Store.open(sys.argv[1], allowed_roots=[])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("started", flush=True)
t = time.perf_counter()
r = import_predictions(store, None, sys.argv[2], batch_size=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "created": r.created,
                  "rss_before_mib": base,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=2)
    return p


def write_file(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {
                "case_key": f"bench-{i:06d}",
                "kind": "retrieval",
                "model": "m",
                "model_version": "v1",
                "site": f"site-{i % 3}",
                "label": "nv",
                "scores": {"nv": 0.7, "mel": 0.3},
                "artifacts": {"query": f"q{i}.png", "demonstrations": [], "lmm_answer": "nv"},
            }
            fh.write(json.dumps(rec) + "\n")


def run_once(folder: Path, data: Path, batch_size: int) -> dict[str, float]:
    url = f"sqlite:///{folder / 'review.db'}"
    store = Store.open(url, allowed_roots=[])
    user = auth.create_user(store, *USER)
    seed = folder / "seed.jsonl"
    write_file(seed, 1)
    import_predictions(store, None, seed)
    with store.session() as session:
        case_id = session.query(Case.id).scalar()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(data), str(batch_size)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "started"
    logins: list[float] = []
    reviews: list[float] = []
    failed = 0
    version = 0
    while child.poll() is None:
        t0 = time.perf_counter()
        try:
            auth.authenticate(store, *USER)
            t1 = time.perf_counter()
            submit_review(store, user, case_id, decision="accept", expected_version=version)
            version += 1
            t2 = time.perf_counter()
            logins.append(t1 - t0)
            reviews.append(t2 - t1)
        except ReviewError:
            failed += 1
        time.sleep(0.2)
    out = json.loads(child.communicate()[0].strip().splitlines()[-1])
    store.close()
    return {
        **out,
        "n": len(logins),
        "failed": failed,
        "login_max": max(logins, default=float("nan")),
        "login_median": statistics.median(logins) if logins else float("nan"),
        "review_max": max(reviews, default=float("nan")),
    }


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    modes = {f"batched ({BATCH_SIZE})": BATCH_SIZE, "one transaction (reference)": args.lines}
    with tempfile.TemporaryDirectory(prefix="medcl-import-bench-") as tmp:
        data = Path(tmp) / "predictions.jsonl"
        write_file(data, args.lines)
        mib = data.stat().st_size / 2**20
        print(f"{args.lines} lines ({mib:.1f} MiB), SQLite, {args.repeats} repeat(s), interleaved")
        print(
            f"{'importer':30} {'import s':>8} {'RSS MiB':>14} {'logins':>6} {'failed':>6} "
            f"{'login max s':>11} {'median s':>8} {'review max s':>12}"
        )
        for r in range(args.repeats):
            for name, batch in modes.items():
                folder = Path(tmp) / f"{r}-{batch}"
                folder.mkdir()
                res = run_once(folder, data, batch)
                rss = f"{res['rss_before_mib']:.0f} -> {res['peak_rss_mib']:.0f}"
                print(
                    f"{name:30} {res['seconds']:8.1f} {rss:>14} {res['n']:6d} "
                    f"{res['failed']:6d} {res['login_max']:11.2f} {res['login_median']:8.2f} "
                    f"{res['review_max']:12.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
