"""Service: worklist, case page, reviews with optimistic concurrency, artifact path safety."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from medcl.errors import InvalidInputError
from medcl.review.auth import UserInfo
from medcl.review.db import Audit, Case, Review, Store
from medcl.review.errors import ConflictError, NotFoundError, ReviewError
from medcl.review.service import (
    artifact_path,
    case_history,
    filter_options,
    get_case,
    list_cases,
    submit_review,
)


def _id(store: Store, key: str) -> int:
    with store.session() as session:
        found = session.scalar(select(Case.id).where(Case.case_key == key))
    assert found is not None
    return found


def test_worklist_sorted_by_uncertainty(seeded: Store, reviewer: UserInfo) -> None:
    page = list_cases(seeded, reviewer)
    assert [c.case_key for c in page.items] == ["s1", "v1", "r2", "r3", "r1"]
    assert [c.uncertainty for c in page.items] == [0.9, 0.7, 0.5, 0.3, 0.1]
    assert (page.total, page.page, page.page_size) == (5, 1, 25)
    up = list_cases(seeded, reviewer, descending=False)
    assert [c.case_key for c in up.items] == ["r1", "r3", "r2", "v1", "s1"]
    by_key = list_cases(seeded, reviewer, sort="case_key", descending=False)
    assert [c.case_key for c in by_key.items] == ["r1", "r2", "r3", "s1", "v1"]
    with pytest.raises(ReviewError, match="sort must be one of uncertainty, updated, case_key"):
        list_cases(seeded, reviewer, sort="label")


def test_worklist_filters(seeded: Store, reviewer: UserInfo) -> None:
    def keys(**kw: Any) -> list[str]:
        return [
            c.case_key
            for c in list_cases(seeded, reviewer, sort="case_key", descending=False, **kw).items
        ]

    assert keys(kind="retrieval") == ["r1", "r2", "r3"]
    assert keys(site="trunk") == ["r1", "r3"]
    assert keys(model="other") == ["r3"]
    assert keys(kind="retrieval", site="trunk", model="m") == ["r1"]
    assert keys(search="MEL") == ["r2"]  # predicted label, case-insensitive
    assert keys(search="s") == ["s1"]
    assert keys(status="pending") == ["r1", "r2", "r3", "s1", "v1"]
    submit_review(seeded, reviewer, _id(seeded, "r2"), decision="accept", expected_version=0)
    assert keys(status="accepted") == ["r2"]
    assert filter_options(seeded, reviewer) == {
        "status": ["accepted", "pending"],
        "kind": ["retrieval", "slide", "volume"],
        "model": ["m", "other"],
        "site": ["", "face", "trunk"],
    }


def test_worklist_pagination(seeded: Store, reviewer: UserInfo) -> None:
    pages = [list_cases(seeded, reviewer, page=p, page_size=2) for p in (1, 2, 3, 4)]
    assert [[c.case_key for c in p.items] for p in pages] == [
        ["s1", "v1"],
        ["r2", "r3"],
        ["r1"],
        [],
    ]
    assert {p.total for p in pages} == {5}
    assert pages[0].n_pages == 3
    filtered = list_cases(seeded, reviewer, kind="retrieval", page=2, page_size=2)
    assert (filtered.total, [c.case_key for c in filtered.items]) == (3, ["r1"])


def test_get_case_records_the_view(seeded: Store, reviewer: UserInfo, tmp_path: Path) -> None:
    detail = get_case(seeded, reviewer, _id(seeded, "s1"))
    assert detail.summary.label == "tumor" and detail.version == 0 and detail.reviews == []
    assert detail.scores == {"nv": 0.7, "mel": 0.3}
    assert detail.artifacts["slide"] == str(tmp_path / "s1.tiff")  # made absolute at import
    assert detail.artifacts["top_tiles"] == [str(tmp_path / "tiles" / "s1_0.png")]
    with seeded.session() as session:
        audit = session.scalars(select(Audit).where(Audit.action == "view_case")).all()
    assert [(a.username, a.case_id) for a in audit] == [("alice", detail.summary.id)]
    with pytest.raises(NotFoundError, match="no case with id 999"):
        get_case(seeded, reviewer, 999)


def test_two_reviewers_one_version_one_conflict(
    seeded: Store, reviewer: UserInfo, reviewer2: UserInfo
) -> None:
    from medcl.review.auth import system_user
    from medcl.review.blind import set_blind_review

    set_blind_review(seeded, system_user(), False)  # blind conflicts: tests/review/test_blind.py
    cid = _id(seeded, "r1")
    seen_a = get_case(seeded, reviewer, cid)
    seen_b = get_case(seeded, reviewer2, cid)
    assert seen_a.version == seen_b.version == 0
    first = submit_review(
        seeded,
        reviewer,
        cid,
        decision="correct",
        corrected_label="mel",
        comment="pigment network",
        confidence=4,
        expected_version=seen_a.version,
    )
    with pytest.raises(ConflictError) as err:
        submit_review(seeded, reviewer2, cid, decision="accept", expected_version=seen_b.version)
    assert str(err.value).startswith("case was reviewed by alice at ")
    assert str(err.value).endswith(" while you were editing; your review was not saved")
    current = err.value.current
    assert current.version == 1 and current.summary.status == "corrected"
    assert current.reviews == [first]
    with seeded.session() as session:
        assert session.scalar(select(func.count(Review.id))) == 1
        actions = session.scalars(select(Audit.action).where(Audit.action == "review")).all()
    assert actions == ["review"]
    # with the fresh version bob's review is saved
    second = submit_review(seeded, reviewer2, cid, decision="accept", expected_version=1)
    assert case_history(seeded, reviewer, cid) == [second, first]
    assert get_case(seeded, reviewer, cid).summary.status == "accepted"


def test_review_validation(seeded: Store, reviewer: UserInfo) -> None:
    rid, vid = _id(seeded, "r1"), _id(seeded, "v1")
    cases = [
        (dict(decision="maybe"), "decision must be one of accept, reject, correct (got 'maybe')"),
        (dict(decision="correct"), "a correction needs a corrected label"),
        (dict(decision="accept", confidence=6), "confidence must be an integer from 1 to 5"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ReviewError, match=message.replace("(", r"\(").replace(")", r"\)")):
            submit_review(seeded, reviewer, rid, expected_version=0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ReviewError, match="a correction needs a corrected label or a comment"):
        submit_review(seeded, reviewer, vid, decision="correct", expected_version=0)
    saved = submit_review(
        seeded, reviewer, vid, decision="correct", comment="missed segment 4", expected_version=0
    )
    assert saved.corrected_label is None and saved.comment == "missed segment 4"
    accepted = submit_review(
        seeded, reviewer, rid, decision="accept", corrected_label="x", expected_version=0
    )
    assert accepted.corrected_label is None  # a label only belongs to corrections
    with pytest.raises(NotFoundError):
        submit_review(seeded, reviewer, 999, decision="accept", expected_version=0)
    with seeded.session() as session:
        assert session.scalar(select(func.count(Review.id))) == 2


def test_artifact_path_refuses_escapes(seeded: Store, reviewer: UserInfo, tmp_path: Path) -> None:
    (tmp_path / "s1.tiff").write_bytes(b"x")
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "s1_0.png").write_bytes(b"x")
    detail = get_case(seeded, reviewer, _id(seeded, "s1"))
    assert artifact_path(seeded, detail, "slide") == (tmp_path / "s1.tiff").resolve()
    assert artifact_path(seeded, detail, "top_tiles", 0).name == "s1_0.png"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("secret")
    link = tmp_path / "link.png"
    os.symlink(outside, link)
    for value in (
        str(tmp_path / ".." / outside.name),  # ../ escape
        str(outside),  # absolute, outside the roots
        str(link),  # symlink inside pointing out
        "relative/s1.tiff",
    ):
        detail.artifacts["heatmap"] = value
        with pytest.raises(InvalidInputError) as err:
            artifact_path(seeded, detail, "heatmap")
        assert str(err.value).startswith(value + ": ")
    with pytest.raises(NotFoundError, match="no artifact 'thumbnail'"):
        artifact_path(seeded, detail, "thumbnail")
    with pytest.raises(NotFoundError, match=r"no artifact top_tiles\[3\]"):
        artifact_path(seeded, detail, "top_tiles", 3)
    detail.artifacts["heatmap"] = str(tmp_path / "missing.png")
    with pytest.raises(NotFoundError, match="artifact file not found"):
        artifact_path(seeded, detail, "heatmap")
    outside.unlink()


def _review_three(store: Store, user: UserInfo) -> None:
    submit_review(
        store,
        user,
        _id(store, "r1"),
        decision="correct",
        corrected_label="mel",
        comment='dots, "streaks"\nand a veil',
        confidence=5,
        expected_version=0,
    )
    submit_review(store, user, _id(store, "s1"), decision="reject", expected_version=0)
    submit_review(
        store,
        user,
        _id(store, "v1"),
        decision="correct",
        comment="liver  tip\nmissed",
        expected_version=0,
    )


def test_export_csv_and_json_round_trip(seeded: Store, reviewer: UserInfo, admin: UserInfo) -> None:
    import csv
    import io
    import json

    from medcl.review.errors import PermissionDeniedError
    from medcl.review.service import audit_log, export_reviews

    _review_three(seeded, reviewer)
    with pytest.raises(PermissionDeniedError):
        export_reviews(seeded, reviewer, "csv")
    with pytest.raises(ReviewError, match="export format must be csv or json"):
        export_reviews(seeded, admin, "xml")
    as_json = json.loads(export_reviews(seeded, admin, "json"))
    as_csv = list(csv.DictReader(io.StringIO(export_reviews(seeded, admin, "csv"))))
    expected = [
        ("r1", "retrieval", "nv", "correct", "mel", 'dots, "streaks"\nand a veil', 5),
        ("s1", "slide", "tumor", "reject", None, "", None),
        ("v1", "volume", "liver", "correct", None, "liver  tip\nmissed", None),
    ]
    fields = (
        "case_key",
        "kind",
        "predicted_label",
        "decision",
        "corrected_label",
        "comment",
        "confidence",
    )
    assert [tuple(r[f] for f in fields) for r in as_json] == expected
    assert [tuple(r[f] for f in fields) for r in as_csv] == [
        tuple("" if v is None else str(v) for v in row) for row in expected
    ]
    assert {r["reviewer"] for r in as_json} == {"alice"}
    assert [r["review_id"] for r in as_json] == [int(r["review_id"]) for r in as_csv]
    exports = audit_log(seeded, admin, action="export")
    assert [e.detail["format"] for e in exports] == ["csv", "json"]  # newest first
    assert {e.username for e in audit_log(seeded, admin, username="alice")} == {"alice"}


def test_corrections_manifest_loads_as_an_image_set(
    seeded: Store, reviewer: UserInfo, admin: UserInfo, tmp_path: Path
) -> None:
    from medcl.io.images import load_image_set
    from medcl.review.service import export_corrections_manifest

    for name in ("r1.png", "v1.nii.gz", "s1.tiff"):
        (tmp_path / name).write_bytes(b"x")
    from medcl.review.labels import add_extra_label

    _review_three(seeded, reviewer)
    add_extra_label(seeded, admin, "m", "bcc")  # not in model m's class map {nv, mel}
    submit_review(
        seeded,
        reviewer,
        _id(seeded, "r2"),
        decision="correct",
        corrected_label="bcc",
        expected_version=0,
    )
    # r2's newest review accepts the prediction: it is no longer a correction
    submit_review(seeded, reviewer, _id(seeded, "r2"), decision="accept", expected_version=1)
    manifest = tmp_path / "corrections.csv"
    manifest.write_text(export_corrections_manifest(seeded, admin))
    images = load_image_set(manifest)
    rows = [(Path(r["path"]).name, r["label"], r["domain"], r["group"]) for r in images.records()]
    assert rows == [
        ("r1.png", "mel", "trunk", "r1"),
        ("v1.nii.gz", "liver tip missed", "default", "v1"),
    ]
