"""Retrieval metrics on selected demonstrations (pure numpy).

``class_agreement_at_k``: share of demonstrations whose class is the query's; ``knn_vote``: the
class the demonstrations vote for (weighted by similarity or not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcl.retrieval.selectors import Selection


def stack_selections(
    selections: Sequence[Selection], pool_labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(M, k)`` labels (``-1`` where a selection is short) and ``(M, k)`` scores (0 there)."""
    labels = np.full((len(selections), k), -1, dtype=np.int64)
    scores = np.zeros((len(selections), k), dtype=np.float64)
    for i, sel in enumerate(selections):
        n = min(k, len(sel))
        labels[i, :n] = np.asarray(pool_labels)[sel.indices[:n]]
        scores[i, :n] = sel.scores[:n]
    return labels, scores


def class_agreement_at_k(selected_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Share of demonstrations whose label equals their query's (``-1`` entries are skipped).

    Args:
        selected_labels: ``(M, k)`` labels of the demonstrations; query_labels: ``(M,)``.
    """
    sel = np.asarray(selected_labels)
    q = np.asarray(query_labels)
    if sel.ndim != 2 or q.shape != (sel.shape[0],):
        raise ValueError(f"expected (M, k) and (M,) labels, got {sel.shape} and {q.shape}")
    present = sel >= 0
    if not present.any():
        raise ValueError("no demonstrations to score")
    return float((sel == q[:, None])[present].sum() / present.sum())


def macro_agreement_at_k(selected_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Class agreement averaged per query class, then over the classes present.

    A selector that always shows the majority class scores well on :func:`class_agreement_at_k`
    when most queries are of that class; averaged per class it scores ``1 / n_classes``.

    Args:
        selected_labels: ``(M, k)`` labels of the demonstrations; query_labels: ``(M,)``.
    """
    q = np.asarray(query_labels)
    sel = np.asarray(selected_labels)
    return float(np.mean([class_agreement_at_k(sel[q == c], q[q == c]) for c in np.unique(q)]))


def knn_vote(
    selected_labels: np.ndarray, scores: np.ndarray, num_classes: int, weighted: bool = True
) -> np.ndarray:
    """``(M,)`` majority vote of the demonstrations' labels (``-1`` where a row has none).

    Each demonstration votes for its label with weight ``score`` (``weighted``) or 1; only the
    classes present in a row compete and ties go to the lower class index. ``-1`` labels skip.

    Args:
        selected_labels: ``(M, k)`` int labels in ``[0, num_classes)`` or ``-1``.
        scores: ``(M, k)`` similarity of each demonstration to its query.
    """
    sel = np.asarray(selected_labels)
    w = np.asarray(scores, dtype=np.float64)
    if sel.ndim != 2 or w.shape != sel.shape:
        raise ValueError(f"expected (M, k) labels and scores, got {sel.shape} and {w.shape}")
    if sel.size and (sel.max() >= num_classes or sel.min() < -1):
        raise ValueError(f"labels must lie in [0, {num_classes}) or be -1")
    present = sel >= 0
    weight = np.where(present, w if weighted else 1.0, 0.0)
    rows = np.repeat(np.arange(sel.shape[0]), sel.shape[1])
    votes = np.zeros((sel.shape[0], num_classes))
    np.add.at(votes, (rows, np.where(present, sel, 0).ravel()), weight.ravel())
    seen = np.zeros((sel.shape[0], num_classes), dtype=bool)
    seen[rows[present.ravel()], sel[present]] = True
    pred = np.argmax(np.where(seen, votes, -np.inf), axis=1)
    return np.where(present.any(axis=1), pred, -1).astype(np.int64)
