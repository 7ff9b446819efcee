"""Demonstration selectors against plain loop references, and the selection metrics."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from medcl.retrieval.metrics import class_agreement_at_k, knn_vote, stack_selections
from medcl.retrieval.selectors import (
    InvariantSelectPR,
    RandomPR,
    Selection,
    TopKNearestPR,
    create_selector,
    list_selectors,
)


def make_pool(n: int = 24, d: int = 6, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d))
    meta = pd.DataFrame(
        {
            "label": [i % 3 for i in range(n)],
            "domain": [f"h{i % 4}" for i in range(n)],
            "group": [f"p{i // 2}" for i in range(n)],
        }
    )
    return emb, meta


def cosine(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_topk(
    query: np.ndarray, pool: np.ndarray, keep: list[bool], k: int
) -> list[tuple[int, float]]:
    """Brute force: the cosine of every kept pool row, sorted by (-score, row)."""
    scored = [(j, cosine(query, pool[j])) for j in range(len(pool)) if keep[j]]
    return sorted(scored, key=lambda t: (-t[1], t[0]))[:k]


def test_registry_names_and_unknown() -> None:
    assert list_selectors() == ["invariant", "random", "topk"]
    assert isinstance(create_selector("invariant"), InvariantSelectPR)
    assert isinstance(create_selector("invariant"), TopKNearestPR)
    assert isinstance(create_selector("random", max_per_class=2), RandomPR)
    with pytest.raises(ValueError) as info:
        create_selector("nearest")
    assert str(info.value) == "unknown selector 'nearest'; valid names: invariant, random, topk"


@pytest.mark.parametrize("name", ["topk", "invariant"])
def test_topk_equals_brute_force_sorted_cosine(name: str) -> None:
    pool, meta = make_pool()
    queries = np.random.default_rng(1).normal(size=(4, 6))
    sels = create_selector(name, exclude_group=False).select(queries, pool, meta, 5)
    assert len(sels) == 4
    for q, sel in zip(queries, sels, strict=True):
        ref = reference_topk(q, pool, [True] * len(pool), 5)
        assert sel.indices.tolist() == [j for j, _ in ref]
        assert np.allclose(sel.scores, [s for _, s in ref], atol=1e-12)
        assert sel.indices.dtype == np.int64
    # One (D,) query gives a list of one; select_one unwraps it.
    (single,) = TopKNearestPR().select(queries[0], pool, meta, 5)
    assert single.indices.tolist() == sels[0].indices.tolist()
    assert TopKNearestPR().select_one(queries[0], pool, meta, 5).indices.tolist() == (
        sels[0].indices.tolist()
    )


def test_group_exclusion() -> None:
    pool, meta = make_pool()
    query = pool[6] + 0.01  # nearest are row 6 and its group mate row 7 (group p3)
    sel = TopKNearestPR().select_one(query, pool, meta, 4, query_group="p3")
    keep = [g != "p3" for g in meta["group"]]
    assert sel.indices.tolist() == [j for j, _ in reference_topk(query, pool, keep, 4)]
    assert 6 not in sel.indices and 7 not in sel.indices
    # exclude_group=False keeps the query's own group; a batch takes one group per query.
    keep_own = TopKNearestPR(exclude_group=False).select_one(query, pool, meta, 4, query_group="p3")
    assert 6 in keep_own.indices
    sels = TopKNearestPR().select(np.stack([query, query]), pool, meta, 4, query_group=["p3", None])
    assert 6 not in sels[0].indices and 6 in sels[1].indices


def test_domain_restriction() -> None:
    pool, meta = make_pool()
    query = np.ones(6)
    sel = TopKNearestPR(domains=["h1", "h3"]).select_one(query, pool, meta, 5)
    keep = [d in ("h1", "h3") for d in meta["domain"]]
    assert sel.indices.tolist() == [j for j, _ in reference_topk(query, pool, keep, 5)]
    assert set(meta["domain"].iloc[sel.indices]) <= {"h1", "h3"}


def test_max_per_class_never_exceeded_and_keeps_the_best_of_each_class() -> None:
    pool, meta = make_pool(n=30)
    queries = np.random.default_rng(2).normal(size=(5, 6))
    labels = meta["label"].to_numpy()
    for q, sel in zip(
        queries, TopKNearestPR(max_per_class=2).select(queries, pool, meta, 5), strict=True
    ):
        # Plain greedy: walk the brute-force ranking, take a row while its class has < 2.
        counts: dict[int, int] = {}
        expected = []
        for j, _ in reference_topk(q, pool, [True] * len(pool), len(pool)):
            if counts.get(int(labels[j]), 0) < 2:
                counts[int(labels[j])] = counts.get(int(labels[j]), 0) + 1
                expected.append(j)
            if len(expected) == 5:
                break
        assert sel.indices.tolist() == expected
        assert max(np.bincount(labels[sel.indices])) <= 2


def test_fewer_valid_than_k_returns_fewer_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    pool, meta = make_pool(n=8)
    with caplog.at_level(logging.WARNING, logger="medcl.retrieval.selectors"):
        sel = TopKNearestPR(max_per_class=1).select_one(np.ones(6), pool, meta, 5)
    assert len(sel) == 3  # three classes, one each
    assert "1 of 1 queries got fewer than k=5 demonstrations (fewest: 3)" in caplog.text


def test_mmr_lambda_one_equals_topk() -> None:
    pool, meta = make_pool()
    queries = np.random.default_rng(3).normal(size=(3, 6))
    plain = TopKNearestPR(max_per_class=2).select(queries, pool, meta, 6)
    mmr = TopKNearestPR(max_per_class=2, mmr_lambda=1.0).select(queries, pool, meta, 6)
    for a, b in zip(plain, mmr, strict=True):
        assert a.indices.tolist() == b.indices.tolist()
        assert np.allclose(a.scores, b.scores)


def test_mmr_prefers_a_diverse_item() -> None:
    # Rows 0 and 1 are near-duplicates close to the query; row 2 points elsewhere.
    pool = np.array([[1.0, 0.0], [0.99, 0.14], [0.6, -0.8]])
    meta = pd.DataFrame({"label": [0, 0, 1], "domain": ["a"] * 3, "group": ["g0", "g1", "g2"]})
    query = np.array([1.0, 0.05])
    assert TopKNearestPR().select_one(query, pool, meta, 2).indices.tolist() == [0, 1]
    sel = TopKNearestPR(mmr_lambda=0.3).select_one(query, pool, meta, 2)
    # Step 1 takes row 0 (the most similar). Step 2 by hand: row 1 scores 0.3 * 0.996 - 0.7 *
    # 0.990 = -0.394, row 2 scores 0.3 * 0.559 - 0.7 * 0.6 = -0.252: the duplicate loses.
    mmr_1 = 0.3 * cosine(query, pool[1]) - 0.7 * cosine(pool[1], pool[0])
    mmr_2 = 0.3 * cosine(query, pool[2]) - 0.7 * cosine(pool[2], pool[0])
    assert mmr_1 == pytest.approx(-0.394, abs=1e-3) and mmr_2 == pytest.approx(-0.252, abs=1e-3)
    assert mmr_2 > mmr_1
    assert sel.indices.tolist() == [0, 2]
    assert np.allclose(sel.scores, [cosine(query, pool[0]), cosine(query, pool[2])])


def test_candidates_from_an_index_replace_the_scan() -> None:
    pool, meta = make_pool()
    queries = np.random.default_rng(4).normal(size=(2, 6))
    refs = [reference_topk(q, pool, [True] * len(pool), 8) for q in queries]
    # (scores, indices) as FAISS returns them, with a "no result" -1 at the end.
    ids = np.array([[j for j, _ in r] + [-1] for r in refs], dtype=np.int64)
    scores = np.array([[s for _, s in r] + [-np.inf] for r in refs])
    sels = TopKNearestPR().select(
        queries, pool, meta, 4, query_group=["p0", "p1"], candidates=(scores, ids)
    )
    for r, sel, bad in zip(refs, sels, ["p0", "p1"], strict=True):
        expected = [(j, s) for j, s in r if meta["group"][j] != bad][:4]
        assert sel.indices.tolist() == [j for j, _ in expected]
        assert np.allclose(sel.scores, [s for _, s in expected])


def test_mmr_over_full_candidate_lists_equals_mmr_over_the_scan() -> None:
    pool, meta = make_pool()
    queries = np.random.default_rng(5).normal(size=(3, 6))
    refs = [reference_topk(q, pool, [True] * len(pool), len(pool)) for q in queries]
    ids = np.array([[j for j, _ in r] for r in refs], dtype=np.int64)
    scores = np.array([[s for _, s in r] for r in refs])
    selector = TopKNearestPR(mmr_lambda=0.6, max_per_class=2)
    scan = selector.select(queries, pool, meta, 5, query_group=["p0", "p1", "p2"])
    cand = selector.select(
        queries, pool, meta, 5, query_group=["p0", "p1", "p2"], candidates=(scores, ids)
    )
    for a, b in zip(scan, cand, strict=True):
        assert a.indices.tolist() == b.indices.tolist()
        assert np.allclose(a.scores, b.scores)
    # and lambda < 1 changes the choice on this pool for at least one query
    plain = TopKNearestPR(max_per_class=2).select(queries, pool, meta, 5, query_group="p0")
    assert any(
        a.indices.tolist() != b.indices.tolist()
        for a, b in zip(
            plain,
            TopKNearestPR(mmr_lambda=0.6, max_per_class=2).select(
                queries, pool, meta, 5, query_group="p0"
            ),
            strict=True,
        )
    )


def test_random_is_deterministic_per_seed_and_respects_filters() -> None:
    pool, meta = make_pool(n=40)
    sel = RandomPR(domains=["h0", "h2"], max_per_class=2)
    queries = np.ones((3, 6))
    a = sel.select(queries, pool, meta, 5, query_group="p2", rng=7)
    b = sel.select(queries, pool, meta, 5, query_group="p2", rng=np.random.default_rng(7))
    c = sel.select(queries, pool, meta, 5, query_group="p2", rng=8)
    assert [s.indices.tolist() for s in a] == [s.indices.tolist() for s in b]
    assert [s.indices.tolist() for s in a] != [s.indices.tolist() for s in c]
    for s in a + c:
        assert len(s) == 5 and len(set(s.indices.tolist())) == 5
        chosen = meta.iloc[s.indices]
        assert set(chosen["domain"]) <= {"h0", "h2"}
        assert "p2" not in set(chosen["group"])
        assert chosen["label"].value_counts().max() <= 2
        assert np.allclose(s.scores, [cosine(queries[0], pool[j]) for j in s.indices])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            lambda: TopKNearestPR(max_per_class=0),
            "max_per_class must be an integer >= 1 or None, got 0",
        ),
        (
            lambda: TopKNearestPR(mmr_lambda=1.5),
            "mmr_lambda must be a number in [0, 1] or None, got 1.5",
        ),
        (
            lambda: TopKNearestPR(domains=[]),
            "domains must be a non-empty list of names or None, got []",
        ),
        (lambda: RandomPR(mmr_lambda=0.5), "mmr_lambda does not apply to the random selector"),
    ],
)
def test_bad_options(factory: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        factory()  # type: ignore[operator]
    assert str(info.value) == message


def test_bad_inputs() -> None:
    pool, meta = make_pool(n=6)
    q = np.ones(6)
    ids_f, scores_f = np.array([1, 2]), np.array([0.5, 0.4])  # swapped: ids passed as scores
    one = np.array([0.5])
    cases = [
        (lambda: TopKNearestPR().select(np.ones(5), pool, meta, 2),
         "query_emb must be (D,) or (M, D) and pool_emb (N, D) with the same D, "
         "got (5,) and (6, 6)"),
        (lambda: TopKNearestPR().select(q, pool, meta.iloc[:3], 2),
         "pool_meta has 3 rows but pool_emb 6"),
        (lambda: TopKNearestPR().select(q, pool, meta, 0), "k must be an integer >= 1, got 0"),
        (lambda: TopKNearestPR(max_per_class=1).select(q, pool, meta.drop(columns="label"), 2),
         "pool_meta lacks the column 'label' needed by max_per_class"),
        (lambda: TopKNearestPR().select(q, pool, meta.drop(columns="group"), 2, query_group="p0"),
         "pool_meta lacks the column 'group' needed by exclude_group"),
        (lambda: TopKNearestPR().select(np.ones((2, 6)), pool, meta, 2, query_group=["p0"]),
         "query_group has 1 entries for 2 queries"),
        (lambda: TopKNearestPR().select(q, pool, meta, 2, candidates=(ids_f, scores_f)),
         "candidate indices must be integers, got dtype float64"),
        (lambda: TopKNearestPR().select(q, pool, meta, 2, candidates=(one, np.array([9]))),
         "candidate index 9 is outside the pool of 6 items"),
        (lambda: RandomPR().select(q, pool, meta, 2, candidates=(one, np.array([1]))),
         "the random selector samples the whole pool; candidates do not apply"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == message


def test_class_agreement_hand_computed() -> None:
    selected = np.array([[0, 0, 1], [2, 1, 1], [1, -1, -1]])
    # Query 0 (label 0): 2 of 3 agree; query 1 (label 1): 2 of 3; query 2 (label 0): 0 of 1.
    assert class_agreement_at_k(selected, np.array([0, 1, 0])) == pytest.approx(4 / 7)
    with pytest.raises(ValueError) as info:
        class_agreement_at_k(np.full((2, 2), -1), np.array([0, 1]))
    assert str(info.value) == "no demonstrations to score"


def test_knn_vote_weighted_vs_unweighted() -> None:
    labels = np.array([[0, 1, 1], [2, 2, 0], [-1, -1, -1], [1, 0, -1]])
    scores = np.array([[0.9, 0.3, 0.4], [0.1, 0.2, 0.5], [0.0, 0.0, 0.0], [-0.2, -0.3, 0.0]])
    # Row 0: weighted 0.9 vs 0.7 -> 0, counts 1 vs 2 -> 1. Row 1: 0.3 vs 0.5 -> 0, counts -> 2.
    # Row 2: no demonstration -> -1. Row 3: only classes 0 and 1 compete (-0.3 vs -0.2) -> 1;
    # unweighted they tie 1 : 1 and the lower class index wins -> 0.
    assert knn_vote(labels, scores, 3).tolist() == [0, 0, -1, 1]
    assert knn_vote(labels, scores, 3, weighted=False).tolist() == [1, 2, -1, 0]
    with pytest.raises(ValueError) as info:
        knn_vote(labels, scores, 2)
    assert str(info.value) == "labels must lie in [0, 2) or be -1"


def test_stack_selections_pads_short_rows() -> None:
    sels = [
        Selection(np.array([2, 0]), np.array([0.9, 0.8])),
        Selection(np.array([1]), np.array([0.5])),
    ]
    labels, scores = stack_selections(sels, np.array([5, 6, 7]), 2)
    assert labels.tolist() == [[7, 5], [6, -1]]
    assert scores.tolist() == [[0.9, 0.8], [0.5, 0.0]]


def test_macro_agreement_and_interval_references() -> None:
    from scipy import stats

    from medcl.eval.tables import mean_half_width as mean_interval
    from medcl.retrieval.metrics import macro_agreement_at_k

    sel = np.array([[0, 0], [0, 0], [0, 0], [1, 0]])
    q = np.array([0, 0, 0, 1])
    assert macro_agreement_at_k(sel, q) == pytest.approx((1.0 + 0.5) / 2)
    x = [0.2, 0.3, 0.4]
    mean, half = mean_interval(x)
    assert mean == pytest.approx(0.3)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / np.sqrt(3))
    assert np.isnan(mean_interval([0.5])[1])


def test_class_balanced_sampler_draws_classes_equally_and_repeatably() -> None:
    from medcl.retrieval.cci_train import ClassBalancedSampler

    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    s = ClassBalancedSampler(labels, seed=0)
    draws = []
    for epoch in range(40):
        s.set_epoch(epoch)
        draws += list(s)
    share = np.bincount(labels[np.array(draws)], minlength=3) / len(draws)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)
    again = ClassBalancedSampler(labels, seed=0)
    assert list(again) == list(ClassBalancedSampler(labels, seed=0))
    again.set_epoch(1)
    assert list(again) != list(ClassBalancedSampler(labels, seed=0))
    halves = [list(ClassBalancedSampler(labels, 0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 50
