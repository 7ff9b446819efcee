"""Worklist search treats ``%`` and ``_`` literally; volume class names are checked (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medcl.review.auth import UserInfo
from medcl.review.db import Store
from medcl.review.errors import ReviewError
from medcl.review.importer import import_predictions
from medcl.review.queries import escape_like, list_cases
from medcl.review.views import class_names

from .helpers import prediction


def test_escape_like() -> None:
    assert escape_like(r"50%_a\b") == r"50\%\_a\\b"


def test_search_wildcards_match_literally(
    store: Store, reviewer: UserInfo, write_predictions: Callable[..., Path]
) -> None:
    keys = ["100%_sure", "100x-sure", "plain", "back\\slash", "under_score"]
    assert import_predictions(store, None, write_predictions([prediction(k) for k in keys]))

    def found(search: str) -> list[str]:
        page = list_cases(store, reviewer, search=search, sort="case_key", descending=False)
        return [c.case_key for c in page.items]

    assert found("%") == ["100%_sure"]
    assert found("_") == ["100%_sure", "under_score"]
    assert found("0%_s") == ["100%_sure"]
    assert found("0__s") == []  # '_' is no single-character wildcard
    assert found("\\") == ["back\\slash"]
    assert found("SURE") == ["100%_sure", "100x-sure"]  # still case-insensitive


def test_volume_labels_are_checked_at_import(
    store: Store, write_predictions: Callable[..., Path]
) -> None:
    good = prediction("v1", "volume")
    good["artifacts"]["labels"] = {"1": "liver", "2": "spleen"}
    bad = prediction("v2", "volume")
    bad["artifacts"]["labels"] = {"liver": "1"}
    path = write_predictions([good, json.dumps(bad)])
    result = import_predictions(store, None, path)
    assert result.created == 1
    assert result.errors == [
        f'{path}:2: artifacts.labels must map class numbers to names ({{"1": "liver"}})'
    ]


def test_class_names_with_a_bad_key_is_a_review_error() -> None:
    mask = np.zeros((2, 2, 2), dtype=np.uint8)
    mask[0, 0, 0] = 2
    assert class_names(mask, {"1": "liver"}) == {1: "liver", 2: "class 2"}
    with pytest.raises(
        ReviewError, match=r"^artifacts\.labels: key 'liver' is not a class number$"
    ):
        class_names(mask, {"liver": "1"})
