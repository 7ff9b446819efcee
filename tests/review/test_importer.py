"""Import of predictions.jsonl: idempotent, malformed lines reported with their line numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from medcl.errors import InvalidInputError
from medcl.review.db import Audit, Case, Prediction, Store
from medcl.review.errors import ReviewError
from medcl.review.importer import import_predictions, import_records, validate_upload

from .helpers import prediction


def test_import_twice_adds_nothing(store: Store, write_predictions: Callable[..., Path]) -> None:
    path = write_predictions([prediction("a"), prediction("b", "slide"), prediction("c", "volume")])
    first = import_predictions(store, None, path)
    second = import_predictions(store, None, path)
    assert (first.created, first.skipped, first.errors) == (3, 0, [])
    assert (second.created, second.skipped, second.errors) == (0, 3, [])
    with store.session() as session:
        assert session.query(Case).count() == 3 and session.query(Prediction).count() == 3
        imports = session.scalars(select(Audit).where(Audit.action == "import")).all()
    assert [(a.username, a.detail["created"], a.detail["skipped"]) for a in imports] == [
        ("system", 3, 0),
        ("system", 0, 3),
    ]


def test_new_model_version_adds_a_prediction_to_the_case(
    store: Store, write_predictions: Callable[..., Path]
) -> None:
    path = write_predictions([prediction("a"), prediction("a", model_version="v2", label="mel")])
    assert import_predictions(store, None, path).created == 2
    with store.session() as session:
        assert session.query(Case).count() == 1
        assert sorted(p.label for p in session.scalars(select(Prediction))) == ["mel", "nv"]


def test_malformed_lines_are_reported_and_good_lines_kept(
    store: Store, write_predictions: Callable[..., Path]
) -> None:
    bad_kind = prediction("x", kind="retrieval")
    bad_kind["kind"] = "photo"
    lines = [
        prediction("good1"),
        "{not json",
        json.dumps({"kind": "slide"}),
        "",
        json.dumps(bad_kind),
        json.dumps(prediction("u", uncertainty=1.5)),
        json.dumps(prediction("n", scores={}, uncertainty=None)),
        json.dumps(prediction("s", "slide", artifacts={"heatmap": "h.png"})),
        prediction("good2", uncertainty=None, scores={"a": 0.25, "b": 0.75}),
        json.dumps(prediction("good1", kind="slide", model_version="v9")),
    ]
    path = write_predictions(lines)
    result = import_predictions(store, None, path)
    assert result.created == 2 and result.skipped == 0
    assert result.errors == [
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes)",
        f"{path}:3: missing or empty key(s) case_key, model, model_version, label",
        f"{path}:5: kind must be one of volume, slide, retrieval (got 'photo')",
        f"{path}:6: 'uncertainty' must be in [0, 1] (got 1.5)",
        f"{path}:7: no 'uncertainty' and no 'scores' to compute it from",
        f"{path}:8: slide artifacts need 'slide'",
        f"{path}:10: case good1 is a retrieval case, not slide",
    ]
    with store.session() as session:
        good2 = session.scalar(select(Prediction).join(Case).where(Case.case_key == "good2"))
    assert good2 is not None and good2.uncertainty == pytest.approx(0.25)  # 1 - max(scores)


def test_relative_paths_made_absolute(store: Store, tmp_path: Path) -> None:
    sub = tmp_path / "run"
    sub.mkdir()
    rec = prediction(
        "q",
        artifacts={
            "query": "imgs/q.png",
            "demonstrations": [
                {"path": "../pool/d.png", "label": "nv", "similarity": 0.8, "domain": "trunk"},
                {"path": "/abs/e.png", "label": "mel", "similarity": 0.7, "domain": "face"},
            ],
        },
    )
    (sub / "p.jsonl").write_text(json.dumps(rec))
    import_predictions(store, None, sub / "p.jsonl")
    with store.session() as session:
        art = session.scalars(select(Prediction.artifacts)).one()
    assert art["query"] == str(sub / "imgs" / "q.png")
    assert [d["path"] for d in art["demonstrations"]] == [
        str(tmp_path / "pool" / "d.png"),
        "/abs/e.png",
    ]
    assert art["demonstrations"][0]["label"] == "nv"


def test_missing_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="predictions file not found"):
        import_predictions(store, None, tmp_path / "nope.jsonl")


def test_validate_upload(store: Store, tmp_path: Path) -> None:
    good = (json.dumps(prediction("a")) + "\n").encode()
    records = validate_upload("up.jsonl", good, base=tmp_path)
    assert [r["case_key"] for r in records] == ["a"]
    assert records[0]["artifacts"]["query"] == str(tmp_path / "a.png")
    assert import_records(store, None, records, source="up.jsonl").created == 1
    with pytest.raises(ReviewError, match=r"^up\.jsonl: upload is 100 bytes; the limit is 10$"):
        validate_upload("up.jsonl", b"x" * 100, max_bytes=10)
    with pytest.raises(ReviewError, match=r"^up\.jsonl: upload is not UTF-8 text$"):
        validate_upload("up.jsonl", b"\xff\xfe{")
    with pytest.raises(ReviewError, match=r"^up\.jsonl:2: not valid JSON"):
        validate_upload("up.jsonl", good + b"[1,\n", base=tmp_path)
    with pytest.raises(ReviewError, match=r"^up\.jsonl: no predictions in the upload$"):
        validate_upload("up.jsonl", b"\n\n")
