"""The review history entries the case page shows."""

from __future__ import annotations

from datetime import datetime

from medcl.review.history import HistoryEntry, history_entries
from medcl.review.queries import ReviewInfo


def _review(**kw: object) -> ReviewInfo:
    base: dict[str, object] = {
        "id": 1,
        "case_id": 3,
        "reviewer": "alice",
        "decision": "accept",
        "corrected_label": None,
        "comment": "",
        "confidence": None,
        "case_version": 0,
        "created": datetime(2025, 1, 31, 12, 0, 5),
    }
    return ReviewInfo(**{**base, **kw})  # type: ignore[arg-type]


def test_history_entries_keep_the_whole_comment() -> None:
    comment = "stroma, not tumour. " * 40 + "\nsecond line"
    entries = history_entries(
        [
            _review(decision="correct", corrected_label="normal", confidence=4, comment=comment),
            _review(reviewer="bob", case_version=1),
        ]
    )
    assert entries == [
        HistoryEntry(
            "alice",
            "correct -> normal · confidence 4/5 · 2025-01-31 12:00:05 UTC · case version 0",
            comment,
        ),
        HistoryEntry("bob", "accept · 2025-01-31 12:00:05 UTC · case version 1", ""),
    ]
    assert len(entries[0].comment) == len(comment)  # never cut
