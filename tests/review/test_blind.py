"""Blind review: reviewers see neither the ground truth nor others' decisions before submitting."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from medcl.review.auth import UserInfo, system_user
from medcl.review.errors import ConflictError, PermissionDeniedError
from medcl.review.importer import import_predictions
from medcl.review.service import (
    audit_log,
    case_history,
    filter_options,
    get_blind_review,
    get_case,
    list_cases,
    set_blind_review,
    submit_review,
)

from .helpers import prediction


@pytest.fixture
def truthy(store, write_predictions: Callable[..., Path]):  # type: ignore[no-untyped-def]
    """A retrieval case with a true label, a volume case with a ground truth, a slide case."""
    recs = [
        prediction(
            "r1",
            artifacts={"query": "r1.png", "true_label": "mel", "demonstrations": []},
        ),
        prediction(
            "v1",
            "volume",
            label="liver",
            artifacts={"image": "v1.nii.gz", "ground_truth": "v1_gt.nii.gz", "dice": {"liver": 1}},
        ),
        prediction("s1", "slide", artifacts={"slide": "s1.tiff", "true_label": "tumor"}),
    ]
    assert import_predictions(store, None, write_predictions(recs)).created == 3
    return store


def _id(store, key: str) -> int:  # type: ignore[no-untyped-def]
    return next(
        c.id for c in list_cases(store, system_user(), page_size=50).items if c.case_key == key
    )


def test_blind_until_the_reviewer_submits(
    truthy, reviewer: UserInfo, reviewer2: UserInfo, admin: UserInfo
) -> None:  # type: ignore[no-untyped-def]
    assert get_blind_review(truthy) is True  # default on
    rid = _id(truthy, "r1")
    first = submit_review(
        truthy, reviewer2, rid, decision="correct", corrected_label="nv", comment="bob's view",
        expected_version=0,
    )  # fmt: skip
    seen = get_case(truthy, reviewer, rid)
    assert seen.blind and "true_label" not in seen.artifacts
    assert seen.reviews == [] and seen.hidden_reviews == 1
    assert seen.summary.status == "reviewed"  # not 'corrected': that is bob's decision
    assert case_history(truthy, reviewer, rid) == []
    assert get_case(truthy, admin, rid).artifacts["true_label"] == "mel"  # admins see all
    assert get_case(truthy, admin, rid).reviews == [first]
    assert get_case(truthy, reviewer2, rid).artifacts["true_label"] == "mel"  # bob submitted
    mine = submit_review(truthy, reviewer, rid, decision="accept", expected_version=1)
    after = get_case(truthy, reviewer, rid)
    assert not after.blind and after.artifacts["true_label"] == "mel"
    assert after.reviews == [mine, first] and after.summary.status == "accepted"
    views = audit_log(truthy, admin, action="view_case")
    assert [e.detail for e in views if e.username == "alice"] == [{}, {"blind": True}]


def test_ground_truth_of_volume_and_slide_hidden(truthy, reviewer: UserInfo) -> None:  # type: ignore[no-untyped-def]
    vol = get_case(truthy, reviewer, _id(truthy, "v1"))
    assert {"ground_truth", "dice"}.isdisjoint(vol.artifacts) and vol.artifacts["image"]
    slide = get_case(truthy, reviewer, _id(truthy, "s1"))
    assert "true_label" not in slide.artifacts and slide.artifacts["slide"]


def test_worklist_masks_and_filters_statuses(
    truthy, reviewer: UserInfo, reviewer2: UserInfo, admin: UserInfo
) -> None:  # type: ignore[no-untyped-def]
    submit_review(truthy, reviewer2, _id(truthy, "r1"), decision="reject", expected_version=0)
    submit_review(truthy, reviewer, _id(truthy, "s1"), decision="accept", expected_version=0)
    rows = {c.case_key: c.status for c in list_cases(truthy, reviewer).items}
    assert rows == {"r1": "reviewed", "s1": "accepted", "v1": "pending"}
    assert filter_options(truthy, reviewer)["status"] == ["accepted", "pending", "reviewed"]
    for status, keys in (("reviewed", ["r1"]), ("rejected", []), ("accepted", ["s1"])):
        assert [c.case_key for c in list_cases(truthy, reviewer, status=status).items] == keys
    admin_rows = {c.case_key: c.status for c in list_cases(truthy, admin).items}
    assert admin_rows == {"r1": "rejected", "s1": "accepted", "v1": "pending"}
    assert [c.case_key for c in list_cases(truthy, admin, status="rejected").items] == ["r1"]


def test_conflict_stays_blind(truthy, reviewer: UserInfo, reviewer2: UserInfo) -> None:  # type: ignore[no-untyped-def]
    rid = _id(truthy, "r1")
    submit_review(
        truthy, reviewer2, rid, decision="correct", corrected_label="nv", comment="secret",
        expected_version=0,
    )  # fmt: skip
    with pytest.raises(ConflictError) as err:
        submit_review(truthy, reviewer, rid, decision="accept", expected_version=0)
    assert "bob" not in str(err.value) and "hidden until you submit" in str(err.value)
    assert err.value.current.reviews == [] and err.value.current.summary.status == "reviewed"
    assert "true_label" not in err.value.current.artifacts


def test_setting_off_shows_everything_and_is_audited(
    truthy, reviewer: UserInfo, reviewer2: UserInfo, admin: UserInfo
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDeniedError):
        set_blind_review(truthy, reviewer, False)
    set_blind_review(truthy, admin, False)
    assert get_blind_review(truthy) is False
    rid = _id(truthy, "r1")
    submit_review(truthy, reviewer2, rid, decision="reject", expected_version=0)
    seen = get_case(truthy, reviewer, rid)
    assert not seen.blind and seen.artifacts["true_label"] == "mel"
    assert [r.reviewer for r in seen.reviews] == ["bob"] and seen.summary.status == "rejected"
    set_blind_review(truthy, admin, True)
    assert get_case(truthy, reviewer, rid).blind
    changes = audit_log(truthy, admin, action="set_setting")
    assert [json.dumps(e.detail, sort_keys=True) for e in changes] == [
        '{"key": "blind_review", "new": true, "old": false}',
        '{"key": "blind_review", "new": false, "old": true}',
    ]
