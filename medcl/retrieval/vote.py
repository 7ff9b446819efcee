"""The label a retrieval case predicts: the majority of its demonstrations' labels, ties shown.

:func:`majority_vote` never breaks a tie silently: when two or more classes share the most votes
the label is ``"tie: a / b"`` (the tied classes sorted) and :attr:`Vote.tied` lists them, so a
reviewer sees that the demonstrations do not decide. (The evaluation metric
:func:`medcl.retrieval.metrics.knn_vote` scores accuracy and keeps its own tie rule.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medcl.review.predictions import TIE_PREFIX, vote_scores


@dataclass(frozen=True)
class Vote:
    """The outcome of a vote.

    Attributes:
        label: the winning class, or ``"tie: a / b"`` when classes share the most votes.
        scores: vote share of each class (by first appearance).
        tied: the tied classes, sorted (empty when one class won).
    """

    label: str
    scores: dict[str, float]
    tied: tuple[str, ...]

    @property
    def is_tie(self) -> bool:
        return bool(self.tied)


def tie_label(classes: Sequence[str]) -> str:
    """``"tie: a / b"`` for the tied ``classes`` (sorted)."""
    return TIE_PREFIX + " / ".join(sorted(classes))


def majority_vote(labels: Sequence[str]) -> Vote:
    """The majority of ``labels``; a tie for the most votes is reported, not broken.

    >>> majority_vote(["a", "b", "a"]).label
    'a'
    >>> majority_vote(["b", "a"]).label
    'tie: a / b'

    Raises:
        ValueError: no labels.
    """
    if not labels:
        raise ValueError("a vote needs at least one label")
    scores = vote_scores([str(x) for x in labels])
    top = max(scores.values())
    winners = sorted(name for name, share in scores.items() if share == top)
    if len(winners) == 1:
        return Vote(winners[0], scores, ())
    return Vote(tie_label(winners), scores, tuple(winners))
