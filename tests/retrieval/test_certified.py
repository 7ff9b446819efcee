"""The int8 prefilter gives exactly the brute-force top k, and says when it had to fall back."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from medcl.retrieval.certified import Int8Prefilter
from medcl.retrieval.index import DemoIndex, IndexSource


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


@pytest.mark.parametrize("dim", [16, 64, 512])  # 64+ takes FAISS's SIMD int8 kernel
def test_equals_brute_force(dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = _unit(rng.standard_normal((3000, dim)))
    q = _unit(np.concatenate([x[:20] + 0.3 * rng.standard_normal((20, dim)), x[20:40]]))
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    pre = Int8Prefilter(x, candidates=64)
    scores, ids = pre.search(q, 7, flat)
    ref_scores, ref_ids = _brute(x, q, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert pre.stats.certified + pre.stats.fallback == 40
    assert pre.error < 0.02  # int8 codes of unit vectors: small, measured per vector


def test_uncertified_queries_fall_back_and_stay_exact() -> None:
    # isotropic gaussian vectors with k close to the candidate count: scores near the k-th
    # neighbour are crowded, so the certificate must fail for some queries
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((5000, 512)))
    q = _unit(rng.standard_normal((50, 512)))
    flat = faiss.IndexFlatIP(512)
    flat.add(x)
    pre = Int8Prefilter(x, candidates=1)  # at least 4k = 8 candidates are re-ranked
    _, ids = pre.search(q, 2, flat)
    assert pre.stats.fallback > 0
    np.testing.assert_array_equal(ids, _brute(x, q, 2)[1])


def test_wrong_coarse_scores_are_caught() -> None:
    # if the int8 scan lied (a broken kernel), the candidates' own scores expose it
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((2000, 64)))
    flat = faiss.IndexFlatIP(64)
    flat.add(x)
    pre = Int8Prefilter(x, candidates=32)
    pre.scale *= 10.0  # approximate scores now off by 10x
    _, ids = pre.search(x[:5], 3, flat)
    assert pre.stats.fallback == 5
    np.testing.assert_array_equal(ids, _brute(x, x[:5], 3)[1])


def test_demo_index_uses_it_for_large_pools_only() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 32)).astype(np.float32)
    meta = pd.DataFrame({"path": [f"{i}" for i in range(600)], "label": "a", "domain": "d"})
    meta["group"] = meta["path"]
    small = DemoIndex.build(x, meta, source=IndexSource(encoder="f"), prefilter_min_size=1000)
    small.search(x[:3], 5)
    assert small.prefilter_stats is None
    big = DemoIndex.build(x, meta, source=IndexSource(encoder="f"), prefilter_min_size=500)
    _, i1 = big.search(x[:3], 5)
    assert big.prefilter_stats is not None and big.prefilter_stats.certified == 3
    np.testing.assert_array_equal(i1, small.search(x[:3], 5)[1])
    big.add(x[:50] * -1.0, meta.iloc[:50])  # the int8 copy is rebuilt over all 650 vectors
    _, i2 = big.search(-x[:1], 1)
    assert i2[0, 0] in (0, 600)
