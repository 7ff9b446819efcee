"""The review history of a case as the case page shows it: one entry per review, comment whole."""

from __future__ import annotations

from dataclasses import dataclass

from medcl.review.queries import ReviewInfo


@dataclass(frozen=True)
class HistoryEntry:
    """One review for display: ``reviewer``, a ``summary`` line of the other facts, and the
    ``comment`` in full ("" when none). All plain text (the page escapes it)."""

    reviewer: str
    summary: str
    comment: str


def history_entries(reviews: list[ReviewInfo]) -> list[HistoryEntry]:
    """Entries of ``reviews`` in their order (newest first from the service).

    The summary reads ``"correct -> normal · confidence 4/5 · 2025-01-31 12:00:05 UTC · case
    version 0"``; the corrected label only for a correction that gave one, the confidence only
    when given.
    """
    out = []
    for r in reviews:
        parts = [r.decision + (f" -> {r.corrected_label}" if r.corrected_label else "")]
        if r.confidence is not None:
            parts.append(f"confidence {r.confidence}/5")
        parts.append(f"{r.created:%Y-%m-%d %H:%M:%S} UTC")
        parts.append(f"case version {r.case_version}")
        out.append(HistoryEntry(r.reviewer, " · ".join(parts), r.comment))
    return out
