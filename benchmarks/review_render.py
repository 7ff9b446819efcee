"""Benchmark: worklist and case-page render time of the review app with 10,000 cases.

Usage::

    python benchmarks/review_render.py                 # 10,000 cases in a fresh SQLite store
    python benchmarks/review_render.py --cases 2000 --repeats 3

A temporary workspace gets one small slide, heatmap, volume and retrieval image set; a
``predictions.jsonl`` of ``--cases`` cases (kinds, sites, models and uncertainties mixed) pointing
at them is imported through ``medcl review``'s importer. Then, per repeat:

* the worklist query (``service.list_cases``: page 1 of 25, sorted by uncertainty, and filtered
  by kind + site), against a reference in the same process that loads every case with its newest
  prediction into pandas and sorts and pages there (what a page that queries naively would do);
* the full page renders through Streamlit's ``AppTest`` (the same script run a browser gets,
  without the websocket): the worklist page, and a slide, a volume and a retrieval case page.

Acceptance (the medcl issue): worklist and case page under 2 s with 10,000 cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from medcl.review import auth, service
from medcl.review.db import Store
from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

logger = logging.getLogger("review_render")
APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
USER = ("bench", "bench-password-123")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p


def write_artifacts(root: Path) -> dict[str, dict[str, object]]:
    """One small artifact set per kind; every case of a kind points at it."""
    art = root / "artifacts"
    art.mkdir(parents=True)
    image, _ = synthetic_tissue_image(768, 1024, seed=1, n_blobs=4)
    write_pyramidal_tiff(art / "slide.tif", image, levels=3, tile=256, mpp=0.5)
    heat = np.zeros((24, 32, 4), dtype=np.uint8)
    heat[..., 0], heat[..., 3] = 255, np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    Image.fromarray(heat, "RGBA").save(art / "heatmap.png")
    rng = np.random.default_rng(0)
    for i in range(8):
        tile = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(tile).save(art / f"tile_{i}.png")
    vol = rng.normal(0, 50, (96, 96, 48)).astype(np.float32)
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[30:60, 30:60, 10:30] = 1
    mask[60:80, 20:40, 15:35] = 2
    for name, arr in (("ct.nii.gz", vol), ("pred.nii.gz", mask), ("seg.nii.gz", mask)):
        nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), art / name)
    for name in ("q", *(f"d{i}" for i in range(7))):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
            art / f"{name}.png"
        )
    demos = [
        {
            "path": f"artifacts/d{i}.png",
            "label": "nv",
            "similarity": 0.9 - i / 20,
            "domain": "trunk",
        }
        for i in range(7)
    ]
    return {
        "slide": {
            "slide": "artifacts/slide.tif",
            "mpp": 0.5,
            "heatmap": "artifacts/heatmap.png",
            "top_tiles": [f"artifacts/tile_{i}.png" for i in range(8)],
        },
        "volume": {
            "image": "artifacts/ct.nii.gz",
            "mask": "artifacts/pred.nii.gz",
            "ground_truth": "artifacts/seg.nii.gz",
            "labels": {"1": "liver", "2": "spleen"},
        },
        "retrieval": {
            "query": "artifacts/q.png",
            "true_label": "mel",
            "demonstrations": demos,
            "lmm_answer": None,
            "selector": "invariant",
        },
    }


def write_predictions(root: Path, n: int, seed: int) -> Path:
    """``n`` cases cycling through the three kinds, 5 sites and 3 models."""
    artifacts = write_artifacts(root)
    rng = np.random.default_rng(seed)
    kinds = ("slide", "volume", "retrieval")
    lines = []
    for i in range(n):
        kind = kinds[i % 3]
        p = float(rng.uniform(0.5, 1.0))
        lines.append(
            json.dumps(
                {
                    "case_key": f"{kind}:{i:06d}",
                    "kind": kind,
                    "model": f"model-{i % 3}",
                    "model_version": "v1",
                    "site": f"site-{i % 5}",
                    "label": "positive",
                    "scores": {"positive": p, "negative": 1 - p},
                    "artifacts": artifacts[kind],
                }
            )
        )
    path = root / "predictions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and max wall time in ms of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), max(times)


def reference_worklist(store: Store, kind: str | None, site: str | None) -> pd.DataFrame:
    """Load every case with its newest prediction into pandas, then filter, sort and page."""
    sql = (
        "SELECT c.id, c.case_key, c.kind, c.site, c.status, p.model, p.uncertainty, p.created "
        "FROM cases c JOIN predictions p ON p.case_id = c.id"
    )
    with store.engine.connect() as conn:
        df = pd.read_sql(sql, conn)
    df = df.sort_values("created").groupby("id").tail(1)
    if kind:
        df = df[df.kind == kind]
    if site:
        df = df[df.site == site]
    return df.sort_values("uncertainty", ascending=False).iloc[:25]


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'review.db'}"
        os.environ["MEDCL_REVIEW_DB"], os.environ["MEDCL_WORKSPACE"] = url, str(root)
        store = Store.open(url, workspace=root)
        auth.create_user(store, *USER)
        start = time.perf_counter()
        result = service.import_predictions(
            store, None, write_predictions(root, args.cases, args.seed)
        )
        logger.info("imported %d cases in %.1f s", result.created, time.perf_counter() - start)
        user = auth.get_session_user(store, auth.authenticate(store, *USER).token)
        assert user is not None
        ids = {
            k: service.list_cases(store, user, kind=k, page_size=1).items[0].id
            for k in ("slide", "volume", "retrieval")
        }

        rows: list[tuple[str, float, float]] = []
        for name, fn in (
            ("worklist query (medcl)", lambda: service.list_cases(store, user, page_size=25)),
            ("worklist query (reference)", lambda: reference_worklist(store, None, None)),
            ("filtered query (medcl)",
             lambda: service.list_cases(store, user, kind="slide", site="site-1")),
            ("filtered query (reference)", lambda: reference_worklist(store, "slide", "site-1")),
        ):  # fmt: skip
            rows.append((name, *timed(fn, args.repeats)))

        at = AppTest.from_file(str(APP), default_timeout=60).run()
        at.text_input(key="login_username").set_value(USER[0])
        at.text_input(key="login_password").set_value(USER[1])
        at.button[0].click()
        at.run()

        def page(path: str, case: int | None = None) -> Callable[[], object]:
            def run() -> object:
                if case is not None:
                    at.query_params["case"] = str(case)
                out = at.switch_page(path).run()
                if out.exception:
                    raise RuntimeError(f"{path}: {out.exception[0].message}")
                return out

            return run

        rows.append(("worklist page render", *timed(page("app_pages/worklist.py"), args.repeats)))
        for kind in ("slide", "volume", "retrieval"):
            fn = page("app_pages/case.py", ids[kind])
            rows.append((f"{kind} case page render", *timed(fn, args.repeats)))
        store.engine.dispose()

    header = f"{'step (' + str(args.cases) + ' cases)':34} {'median ms':>10} {'max ms':>10}"
    print(header)
    print("-" * len(header))
    for name, med, worst in rows:
        print(f"{name:34} {med:>10.1f} {worst:>10.1f}")
    logger.info("load average after: %.2f (1 min)", os.getloadavg()[0])


if __name__ == "__main__":
    main()
