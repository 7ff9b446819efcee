"""k-NN and linear probe against plain references."""

from __future__ import annotations

import numpy as np
import pytest

from medcl.eval.metrics import classification_metrics
from medcl.eval.probe import knn_predict, linear_probe, select_c


def _reference_knn(train_x, train_y, test_x, k, t, c):  # type: ignore[no-untyped-def]
    out = []
    tn = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    for q in test_x:
        q = q / np.linalg.norm(q)
        sims = tn @ q
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(c)
        for i in order:
            votes[train_y[i]] += np.exp(sims[i] / t)
        out.append(int(np.argmax(votes)))
    return np.array(out)


def test_knn_matches_reference() -> None:
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(60, 8))
    train_y = rng.integers(0, 3, 60)
    test_x = rng.normal(size=(25, 8))
    ours = knn_predict(train_x, train_y, test_x, k=5, temperature=0.1, chunk=7)
    ref = _reference_knn(train_x, train_y, test_x, 5, 0.1, 3)
    np.testing.assert_array_equal(ours, ref)


def test_knn_hand_case() -> None:
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = np.array([0, 0, 1])
    # the query is closest to class 1's single sample, but with k=3 the two class-0 samples win
    # unless the temperature makes the nearest dominate
    q = np.array([[0.3, 1.0]])
    assert knn_predict(train_x, train_y, q, k=1).tolist() == [1]
    assert knn_predict(train_x, train_y, q, k=3, temperature=100.0).tolist() == [0]
    assert knn_predict(train_x, train_y, q, k=3, temperature=0.01).tolist() == [1]


def test_linear_probe_separates_separable_classes() -> None:
    rng = np.random.default_rng(1)
    centers = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(scale=0.5, size=(300, 2))
    pred = linear_probe(x[:200], y[:200], x[200:])
    assert classification_metrics(y[200:], pred)["balanced_accuracy"] > 0.95


def test_metrics_and_errors() -> None:
    m = classification_metrics(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        classification_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(np.zeros((2, 2)), np.zeros(2, int), np.zeros((1, 2)), k=0)


def test_select_c_uses_held_out_groups_and_prefers_regularisation_on_ties() -> None:
    rng = np.random.default_rng(0)
    n = 120
    y = np.repeat([0, 1], n // 2)
    groups = np.arange(n) // 2  # two images per group, never split apart
    # one informative feature among 50 noise features: a tiny C shrinks it to nothing
    x = rng.normal(size=(n, 51))
    x[:, 0] += 3.0 * (2 * y - 1)
    best, scores = select_c(x, y, groups, [1e-6, 1.0], seed=0)
    assert best == 1.0 and set(scores) == {1e-6, 1.0}
    assert scores[1.0] > 0.9 and scores[1e-6] <= scores[1.0]
    # perfectly separable at every C: the tie goes to the strongest regularisation
    x_easy = np.c_[10.0 * (2 * y - 1), rng.normal(size=(n, 2))]
    best_easy, scores_easy = select_c(x_easy, y, groups, [0.1, 1.0, 10.0])
    assert best_easy == 0.1 and all(v == 1.0 for v in scores_easy.values())
    assert select_c(x, y, groups, [0.5]) == (0.5, {})  # one value: used as it is
    with pytest.raises(ValueError, match="C values > 0"):
        select_c(x, y, groups, [0.0, 1.0])
