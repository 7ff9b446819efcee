"""``medcl demo --no-serve`` end to end on the synthetic stand-ins, and its building blocks."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from medcl.cli import main
from medcl.jobs.demo import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from medcl.jobs.demo_retrieval import RetrievalDemoConfig, split_pool_and_queries
from medcl.jobs.demo_slides import toy_bags
from medcl.review.db import Store
from medcl.review.importer import parse_record
from medcl.review.model_card import card_of
from medcl.review.predictions import (
    PredictionRecord,
    artifact_ref,
    read_predictions,
    vote_scores,
    write_predictions,
)

EXPECTED = {"volume": ("volume", 2), "slides": ("slide", 2), "retrieval": ("retrieval", 6)}
PATH_KEYS = {
    "volume": ["image", "mask", "ground_truth"],
    "slide": ["slide", "thumbnail", "heatmap", "scores"],
    "retrieval": ["query"],
}


@dataclass
class DemoRun:
    ws: Path
    out: str
    rerun_out: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    ws = tmp_path_factory.mktemp("demo") / "ws"
    args = ["demo", "--no-serve", "--workspace", str(ws), "--set", "inspect=[]"]
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "MEDCL_DATA",
            "MEDCL_REVIEW_DB",
            "MEDCL_DEMO_PASSWORD",
            "MEDCL_DEMO_ADMIN_PASSWORD",
            "MEDCL_LMM_BASE_URL",
        ):
            mp.delenv(var, raising=False)
        first, second = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(first):
            assert main(args) == 0
        with contextlib.redirect_stdout(second):
            assert main(args) == 0
        yield DemoRun(ws, first.getvalue(), second.getvalue())


def _store(ws: Path) -> Store:
    return Store.open(f"sqlite:///{ws / 'review' / 'review.db'}", allowed_roots=[ws])


def test_three_predictions_files_are_valid_for_the_importer(demo: DemoRun) -> None:
    for stage, (kind, n) in EXPECTED.items():
        path = demo.ws / "demo" / f"{stage}-synthetic-quick" / "predictions.jsonl"
        rows = read_predictions(path)
        assert len(rows) == n
        for row in rows:
            rec = parse_record(row, path.parent)  # raises on anything the importer refuses
            assert rec["kind"] == kind
            assert rec["case_key"].startswith(f"{kind}:")
            # every demo model carries a card marking it research / demonstration only
            card = card_of(rec["artifacts"])
            assert card is not None and card.research_only, rec["case_key"]
            assert card.display_name != rec["model"] and card.uncertainty
            for key in PATH_KEYS[kind]:
                assert Path(rec["artifacts"][key]).is_file(), (rec["case_key"], key)
        if kind == "slide":
            tiles = [t for r in rows for t in r["artifacts"]["top_tiles"]]
            assert tiles and all((path.parent / t).is_file() for t in tiles)
            assert {r["artifacts"]["mpp"] for r in rows} == {0.5}
            assert {r["label"] for r in rows} <= {"negative", "positive"}
            # a colour bar naming the score goes with the layer; 64 px tiles at 0.5 um/px
            for r in rows:
                assert (path.parent / r["artifacts"]["heatmap_colorbar"]).is_file()
                assert r["artifacts"]["heatmap_score"] == "attention (rank-normalised)"
                with h5py.File(path.parent / r["artifacts"]["scores"]) as f:
                    assert f["coords"].attrs["patch_size_level0"] == 64
        if kind == "volume":
            for r in rows:
                assert r["artifacts"]["labels"] == {"1": "sphere_a", "2": "sphere_b"}
                dice = r["artifacts"]["dice"]
                assert set(dice) == {"sphere_a", "sphere_b"}
                assert all(v is None or 0.0 <= v <= 1.0 for v in dice.values())
        if kind == "retrieval":
            for r in rows:
                art = r["artifacts"]
                assert len(art["demonstrations"]) == 5 and art["lmm_answer"] is None
                assert {d["domain"] for d in art["demonstrations"]} == {"site_a"}
                assert r["site"] == "site_b"
                votes = [d["label"] for d in art["demonstrations"]]
                assert r["scores"] == pytest.approx(vote_scores(votes))
                assert r["scores"][r["label"]] == max(r["scores"].values())


def test_import_creates_the_cases_once_and_rerun_changes_nothing(demo: DemoRun) -> None:
    from sqlalchemy import func, select

    from medcl.review.db import Case, Prediction, User

    assert "import volume: 2 created, 0 already there, 0 errors" in demo.out
    assert "import retrieval: 0 created, 6 already there, 0 errors" in demo.rerun_out
    assert demo.rerun_out.count("skipped") == 3  # every stage was found finished
    store = _store(demo.ws)
    try:
        with store.session() as s:
            kinds = dict(s.execute(select(Case.kind, func.count()).group_by(Case.kind)).all())
            assert kinds == {"volume": 2, "slide": 2, "retrieval": 6}
            assert s.scalar(select(func.count()).select_from(Prediction)) == 10
            users = dict(s.execute(select(User.username, User.role)).all())
            assert users == {"demo": "reviewer", "admin": "admin"}
    finally:
        store.close()


def test_demo_logins_authenticate_and_are_printed(demo: DemoRun) -> None:
    from medcl.review import auth

    assert f"login demo / {DEFAULT_DEMO_PASSWORD}  (reviewer)" in demo.out
    assert "http://127.0.0.1:8501" in demo.out
    assert "(existing account; password as first set)" in demo.rerun_out
    store = _store(demo.ws)
    try:
        session = auth.authenticate(store, "demo", DEFAULT_DEMO_PASSWORD)
        assert session.user.username == "demo" and session.user.role == "reviewer"
        admin = auth.authenticate(store, "admin", DEFAULT_ADMIN_PASSWORD).user
        assert admin.role == "admin"
        with pytest.raises(auth.AuthError, match="invalid username or password"):
            auth.authenticate(store, "demo", "wrong-password")
    finally:
        store.close()


def test_every_artifact_resolves_inside_the_workspace(demo: DemoRun) -> None:
    from medcl.review import auth, service

    store = _store(demo.ws)
    try:
        admin = auth.authenticate(store, "admin", DEFAULT_ADMIN_PASSWORD).user
        page = service.list_cases(store, admin, page_size=50)
        assert page.total == 10
        checked = 0
        for summary in page.items:
            case = service.get_case(store, admin, summary.id)
            for key in PATH_KEYS[summary.kind]:
                path = service.artifact_path(store, case, key)
                assert demo.ws.resolve() in path.parents
                checked += 1
            for key in ("top_tiles", "demonstrations"):
                for i in range(len(case.artifacts.get(key) or [])):
                    assert demo.ws.resolve() in service.artifact_path(store, case, key, i).parents
                    checked += 1
        assert checked >= 10 * 1 + 2 * 3 + 6 * 5
    finally:
        store.close()


# ------------------------------------------------------------------------- building blocks


def _record(**kw: object) -> PredictionRecord:
    base: dict[str, object] = {
        "case_key": "retrieval:q1",
        "kind": "retrieval",
        "model": "knn",
        "model_version": "v1",
        "label": "nv",
        "scores": {"nv": 0.6, "mel": 0.4},
        "artifacts": {"query": "q.png", "true_label": None},
    }
    base.update(kw)
    return PredictionRecord(**base)  # type: ignore[arg-type]


def test_write_predictions_round_trips_and_refuses_bad_records(tmp_path: Path) -> None:
    out = tmp_path / "p" / "predictions.jsonl"
    write_predictions(out, [_record(), _record(case_key="retrieval:q2", uncertainty=0.25)])
    rows = read_predictions(out)
    assert [r["case_key"] for r in rows] == ["retrieval:q1", "retrieval:q2"]
    assert "uncertainty" not in rows[0] and rows[1]["uncertainty"] == 0.25
    assert parse_record(rows[0], out.parent)["uncertainty"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"retrieval:q3: 'uncertainty' must be in \[0, 1\]"):
        write_predictions(out, [_record(case_key="retrieval:q3", uncertainty=1.5)])
    with pytest.raises(ValueError, match="retrieval:q1: listed twice for knn v1"):
        write_predictions(out, [_record(), _record()])
    with pytest.raises(ValueError, match="retrieval artifacts need 'query'"):
        write_predictions(out, [_record(artifacts={"true_label": "nv"})])
    assert len(read_predictions(out)) == 2  # the refused writes left the file alone


def test_artifact_ref_and_vote_scores(tmp_path: Path) -> None:
    assert artifact_ref(tmp_path / "a" / "b.png", tmp_path) == "a/b.png"
    assert artifact_ref(tmp_path / "a" / ".." / "c.png", tmp_path) == "c.png"
    assert artifact_ref("/elsewhere/x.png", tmp_path) == "/elsewhere/x.png"
    assert vote_scores(["mel", "nv", "mel", "bkl", "mel"]) == {"mel": 0.6, "nv": 0.2, "bkl": 0.2}
    assert vote_scores([]) == {}


def test_toy_bags_label_by_tiles_of_the_first_slide() -> None:
    features = [np.zeros((3, 4)), np.zeros((5, 4)), np.zeros((2, 4))]  # tiles 0-2 are slide 0
    bags = toy_bags(features, n_bags=20, bag_size=6, seed=1)
    assert [label for _, label in bags] == [1, 0] * 10
    for idx, label in bags:
        assert len(idx) == 6 and idx.min() >= 0 and idx.max() < 10
        n_first = int((idx < 3).sum())
        assert (1 <= n_first <= 3) if label else n_first == 0
    with pytest.raises(ValueError, match=r"tiles per slide: \[3, 0\]"):
        toy_bags([np.zeros((3, 4)), np.zeros((0, 4))], 4, 4)


def test_pool_and_queries_split_by_domain_class_and_lesion() -> None:
    rows = [
        # path, label, domain, group
        ("a1", "mel", "back", "L1"),
        ("a2", "mel", "back", "L2"),
        ("a3", "mel", "trunk", "L3"),
        ("a4", "nv", "trunk", "L4"),
        ("q1", "mel", "face", "L1"),  # same lesion as a pool image: never a query
        ("q2", "mel", "face", "L5"),
        ("q3", "nv", "foot", "L6"),
        ("q4", "nv", "unknown", "L7"),  # excluded domain
        ("q5", "bkl", "foot", "L8"),
    ]
    df = pd.DataFrame(rows, columns=["path", "label", "domain", "group"])
    cfg = RetrievalDemoConfig(source_domains=["back", "trunk"], pool_per_class=5, queries=3)
    pool, queries = split_pool_and_queries(df, cfg)
    assert list(pool["path"]) == ["a1", "a2", "a3", "a4"]
    assert list(queries["path"]) == ["q2", "q3", "q5"]  # one per class, round robin
    capped, _ = split_pool_and_queries(df, cfg.model_copy(update={"pool_per_class": 1}))
    assert sorted(capped["label"]) == ["mel", "nv"]
    json.dumps(queries.to_dict())  # plain values only


def test_a_stage_is_skipped_when_done_and_rerun_afresh_when_its_settings_change(
    tmp_path: Path,
) -> None:
    from medcl.jobs.demo import _run_stage, _versions
    from medcl.jobs.demo_retrieval import RetrievalDemoConfig as Settings
    from medcl.wsi.jobs import TILING_VERSION

    calls: list[int] = []

    def run(settings: Settings, folder: Path, *, data_root: Path | None) -> Path:
        calls.append(settings.k)
        (folder / f"scratch_k{settings.k}").write_text("x")
        return write_predictions(folder / "predictions.jsonl", [_record()])

    folder = tmp_path / "stage"
    folder.mkdir()
    first = _run_stage("retrieval", folder, Settings(k=5), run, None)
    again = _run_stage("retrieval", folder, Settings(k=5), run, None)
    assert (first.skipped, again.skipped, again.cases, calls) == (False, True, 1, [5])
    changed = _run_stage("retrieval", folder, Settings(k=3), run, None)
    assert not changed.skipped and calls == [5, 3]
    assert sorted(p.name for p in folder.iterdir()) == [
        "demo_stage.json",
        "predictions.jsonl",
        "scratch_k3",  # the old run's files were cleared
    ]
    # the same settings from code whose outputs differ (a new version) run afresh too
    versioned = _run_stage("retrieval", folder, Settings(k=3), run, None, {"tiling_version": 2})
    assert not versioned.skipped and calls == [5, 3, 3]
    assert _run_stage("retrieval", folder, Settings(k=3), run, None, {"tiling_version": 2}).skipped
    assert _versions("slides") == {"tiling_version": TILING_VERSION}
    assert _versions("volume") is None
