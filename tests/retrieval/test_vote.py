"""The retrieval case's vote reports ties instead of breaking them."""

from __future__ import annotations

import pytest

from medcl.retrieval.vote import majority_vote, tie_label
from medcl.review.predictions import is_tie_label
from medcl.review.views import vote_tie


def test_majority_wins() -> None:
    vote = majority_vote(["nv", "mel", "nv", "bcc", "nv"])
    assert (vote.label, vote.tied, vote.is_tie) == ("nv", (), False)
    assert vote.scores == pytest.approx({"nv": 0.6, "mel": 0.2, "bcc": 0.2})


def test_tie_is_reported_with_the_tied_classes() -> None:
    vote = majority_vote(["mel", "nv", "bcc", "nv", "mel"])
    assert vote.label == "tie: mel / nv" and vote.tied == ("mel", "nv") and vote.is_tie
    assert is_tie_label(vote.label) and not is_tie_label("nv")
    assert majority_vote(["b", "a"]).label == tie_label(["a", "b"]) == "tie: a / b"
    assert vote_tie(vote.label, {"tie": list(vote.tied)}) == ["mel", "nv"]
    assert vote_tie(vote.label, {}) == ["mel", "nv"]  # parsed from the label
    assert vote_tie("nv", {"tie": None}) == []
    with pytest.raises(ValueError, match="at least one label"):
        majority_vote([])
