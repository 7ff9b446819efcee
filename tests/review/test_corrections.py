"""Corrections stay inside the model's class map plus the labels admins add; exports check too."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytest
from sqlalchemy import update

from medcl.review.auth import UserInfo
from medcl.review.db import Review, Store
from medcl.review.errors import PermissionDeniedError, ReviewError
from medcl.review.labels import (
    add_extra_label,
    list_extra_labels,
    model_classes,
    remove_extra_label,
)
from medcl.review.service import (
    audit_log,
    export_corrections_manifest,
    export_reviews,
    get_case,
    list_cases,
    submit_review,
)


def _id(store: Store, admin: UserInfo, key: str) -> int:
    return next(c.id for c in list_cases(store, admin, page_size=50).items if c.case_key == key)


def test_class_map_of_each_kind() -> None:
    assert model_classes("slide", {"tumor": 0.6, "normal": 0.4}, {}) == ["normal", "tumor"]
    art = {"demonstrations": [{"label": "bcc"}], "classes": ["nv", "mel"], "true_label": "x"}
    assert model_classes("retrieval", {"tie: mel / nv": 1.0, "nv": 0.5}, art) == [
        "bcc",
        "mel",
        "nv",
    ]  # the true label is not a class of the model; a tie label is none
    assert model_classes("volume", {}, {"labels": {"1": "liver", "2": "spleen"}}) == [
        "liver",
        "spleen",
    ]


def test_correction_outside_the_class_map_is_refused(
    seeded: Store, reviewer: UserInfo, admin: UserInfo
) -> None:
    sid = _id(seeded, admin, "s1")  # model m: scores nv, mel
    with pytest.raises(ReviewError) as err:
        submit_review(
            seeded, reviewer, sid, decision="correct", corrected_label="normal", expected_version=0
        )
    assert str(err.value) == (
        "correction refused: 'normal' is not in the class map of model 'm' (allowed: mel, nv; "
        "an admin can add a label)"
    )
    assert get_case(seeded, admin, sid).version == 0  # nothing written
    saved = submit_review(
        seeded, reviewer, sid, decision="correct", corrected_label="mel", expected_version=0
    )
    assert saved.corrected_label == "mel"


def test_admin_added_labels(seeded: Store, reviewer: UserInfo, admin: UserInfo) -> None:
    with pytest.raises(PermissionDeniedError):
        add_extra_label(seeded, reviewer, "m", "normal")
    for bad, why in (("  ", "must not be empty"), ("tie: a / b", "marks a vote tie")):
        with pytest.raises(ReviewError, match=why):
            add_extra_label(seeded, admin, "m", bad)
    info = add_extra_label(seeded, admin, "m", "  normal  tissue ")
    assert (info.model, info.label, info.added_by) == ("m", "normal tissue", "root")
    with pytest.raises(ReviewError, match="already has the label 'normal tissue'"):
        add_extra_label(seeded, admin, "m", "normal tissue")
    sid = _id(seeded, admin, "s1")
    assert get_case(seeded, reviewer, sid).allowed_labels == ("mel", "normal tissue", "nv")
    submit_review(
        seeded, reviewer, sid, decision="correct", corrected_label="normal tissue",
        expected_version=0,
    )  # fmt: skip
    assert [(x.model, x.label) for x in list_extra_labels(seeded, admin)] == [
        ("m", "normal tissue")
    ]
    entries = audit_log(seeded, admin, action="add_label")
    assert [e.detail for e in entries] == [{"model": "m", "label": "normal tissue"}]
    remove_extra_label(seeded, admin, "m", "normal tissue")
    assert [e.detail for e in audit_log(seeded, admin, action="remove_label")] == [
        {"model": "m", "label": "normal tissue"}
    ]


def test_exports_leave_out_a_bad_stored_correction(
    seeded: Store,
    reviewer: UserInfo,
    admin: UserInfo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("r1.png", "r2.png"):
        (tmp_path / name).write_bytes(b"x")
    r1, r2 = _id(seeded, admin, "r1"), _id(seeded, admin, "r2")
    good = submit_review(
        seeded, reviewer, r1, decision="correct", corrected_label="mel", expected_version=0
    )
    bad = submit_review(
        seeded, reviewer, r2, decision="correct", corrected_label="nv", expected_version=0
    )
    with seeded.session(write=True) as session:  # a row written before labels were checked
        session.execute(update(Review).where(Review.id == bad.id).values(corrected_label="normal"))
    skipped: list[dict[str, object]] = []
    with caplog.at_level(logging.WARNING, logger="medcl.review.exports"):
        manifest = export_corrections_manifest(seeded, admin, skipped=skipped)
    rows = list(csv.DictReader(io.StringIO(manifest)))
    assert [(r["case_key"], r["label"]) for r in rows] == [("r1", "mel")]
    reason = (
        "'normal' is not in the class map of model 'm' (allowed: mel, nv; an admin can add a label)"
    )
    assert skipped == [{"case_key": "r2", "review_id": bad.id, "reason": reason}]
    assert f"case r2 review {bad.id} left out of the export: {reason}" in caplog.text
    reviews = list(csv.DictReader(io.StringIO(export_reviews(seeded, admin, "csv"))))
    assert [int(r["review_id"]) for r in reviews] == [good.id]
    audits = audit_log(seeded, admin, action="export")
    assert [e.detail for e in audits] == [
        {"format": "csv", "rows": 1, "skipped": skipped},
        {"format": "manifest", "rows": 1, "skipped": skipped},
    ]
    add_extra_label(seeded, admin, "m", "normal")  # an admin accepts the label: exported again
    assert "normal" in export_corrections_manifest(seeded, admin)
