"""Benchmark: single-query latency of :class:`medcl.retrieval.index.DemoIndex`, exact and HNSW.

Usage::

    python benchmarks/retrieval_latency.py                        # 10k and 100k pools, 512-d
    python benchmarks/retrieval_latency.py --sizes 10000 --ef-search 128 --threads 1

For each pool size: a pool of gaussian vectors (L2-normalised by the index) is indexed as
``exact`` (``IndexFlatIP``) and ``hnsw`` (``--m``, ``--ef-construction``, ``--ef-search``), build
time noted. Latency is timed one query at a time (``search(q[i:i+1], k)`` through the public API,
so validation and normalisation are included), ``--latency-queries`` of them after a few warm-up
searches; p50 and p99 in ms. HNSW recall@k is the mean fraction of the exact top-k found by
HNSW over ``--recall-queries`` queries (searched as one batch). Gaussian 512-d vectors have no
low-dimensional structure, the hardest case for a graph index (see ``--intrinsic-dim``).

Threads: FAISS uses OpenMP; each count in ``--threads`` (default ``1 2``; the acceptance machine
has 2 cores) is set with ``faiss.omp_set_num_threads`` and the queries timed again; builds use
the largest. On a busy machine a second OpenMP thread can make a single query much slower (the
threads wait for each other); one query of an exact search reads ``N x D x 4`` bytes (205 MB at
100k x 512), so it is bound by memory bandwidth. ``--intrinsic-dim r`` draws pool and queries
near a random r-dim subspace: real embeddings have a low intrinsic dimension, which is what
graph search relies on.

``exact`` is what :class:`~medcl.retrieval.index.DemoIndex` does by default for pools of 20k
vectors or more: an int8 scan for 128 candidates, a float32 re-rank and a certificate that no
vector outside the candidates can enter the top k (:mod:`medcl.retrieval.certified`); queries it
cannot certify fall back to ``flat``, so its results equal brute force (recall 1.000 by
construction, checked here) and only its speed depends on the data. ``certified`` is the share of
queries answered without the fallback.

Acceptance (the medcl issue): exact p50 under 5 ms at 100k on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import faiss
import numpy as np
import pandas as pd

from medcl.retrieval.index import DemoIndex, IndexSource

logger = logging.getLogger("retrieval_latency")

BENCH_SOURCE = IndexSource(encoder="benchmark")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=7)
    p.add_argument(
        "--kinds", nargs="+", default=["flat", "exact", "hnsw"], choices=["flat", "exact", "hnsw"],
        help="flat: brute force over float32 (the reference); exact: int8 scan + float32 re-rank "
        "+ certificate (DemoIndex's default for large pools); hnsw: graph search",
    )  # fmt: skip
    p.add_argument("--candidates", type=int, default=128, help="exact: vectors re-ranked")
    p.add_argument("--m", type=int, default=32, help="HNSW graph degree M")
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2],
        help="thread counts to time queries with (omp_set_num_threads); builds use the largest",
    )  # fmt: skip
    p.add_argument(
        "--intrinsic-dim", type=int, default=0,
        help="0: isotropic gaussian; r > 0: rank-r gaussian + small noise (more like embeddings)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    return p


def gaussian(n: int, dim: int, intrinsic: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32: standard gaussian, or with ``intrinsic`` = r > 0 low-rank.

    Low-rank: r-dim standard gaussian codes times one fixed random (r, dim) map (seeded by
    ``dim`` and ``r``, so pool and queries share it), plus gaussian noise of 0.1 x its scale.
    """
    if intrinsic <= 0:
        return rng.standard_normal((n, dim), dtype=np.float32)
    basis = np.random.default_rng([dim, intrinsic]).standard_normal((intrinsic, dim))
    x = rng.standard_normal((n, intrinsic)) @ basis / np.sqrt(intrinsic)
    return (x + 0.1 * rng.standard_normal((n, dim))).astype(np.float32)


def synthetic_pool(
    n: int, dim: int, intrinsic: int, rng: np.random.Generator
) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` vectors (n, dim) float32 (see :func:`gaussian`) and a metadata frame of ``n`` rows."""
    x = gaussian(n, dim, intrinsic, rng)
    meta = pd.DataFrame(
        {
            "path": [f"pool/{i}.png" for i in range(n)],
            "label": rng.integers(0, 5, n),
            "domain": "synthetic",
            "group": "none",
        }
    )
    return x, meta


def latencies_ms(index: DemoIndex, queries: np.ndarray, k: int, warmup: int = 5) -> np.ndarray:
    """Wall time (ms) of ``index.search`` on each query alone, shape (M,)."""
    for i in range(min(warmup, len(queries))):
        index.search(queries[i : i + 1], k)
    out = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[i : i + 1], k)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def read_floor_ms(pool: np.ndarray, repeats: int = 20) -> float:
    """Median ms to read ``pool`` once (a numpy sum, one thread): a floor for one exact query."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pool.sum(dtype=np.float32)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (M, k) present in the same row of ``found``."""
    hits = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(args.seed)
    logger.info(
        "faiss %s, dim %d, k %d, %s pool, load average %.2f (1 min)", faiss.__version__,
        args.dim, args.k, f"rank-{args.intrinsic_dim}" if args.intrinsic_dim else "gaussian",
        os.getloadavg()[0],
    )  # fmt: skip
    n_q = max(args.latency_queries, args.recall_queries)
    header = (
        f"{'pool':>8} {'kind':>6} {'build s':>8} {'threads':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'recall@k':>9} {'certified':>9}"
    )
    rows = [header, "-" * len(header)]
    for n in args.sizes:
        pool, meta = synthetic_pool(n, args.dim, args.intrinsic_dim, rng)
        queries = gaussian(n_q, args.dim, args.intrinsic_dim, rng)
        truth: np.ndarray | None = None  # exact top-k of the recall queries
        floor = read_floor_ms(pool)
        logger.info(
            "pool %d: reading its %.0f MB once takes %.2f ms (%.1f GB/s): floor of an exact query",
            n, pool.nbytes / 1e6, floor, pool.nbytes / floor / 1e6,
        )  # fmt: skip
        variants = {
            "flat": ("exact", {"prefilter": "none"}),
            "exact": ("exact", {"prefilter": "int8", "candidates": args.candidates}),
            "hnsw": (
                "hnsw",
                {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
            ),
        }
        for name in ("flat", "exact", "hnsw"):  # flat first: its results are the reference
            if name not in args.kinds:
                continue
            kind, opts = variants[name]
            faiss.omp_set_num_threads(max(args.threads))
            start = time.perf_counter()
            index = DemoIndex.build(pool, meta, kind=kind, source=BENCH_SOURCE, **opts)
            _, found = index.search(queries[: args.recall_queries], args.k)  # builds the int8 copy
            build_s = time.perf_counter() - start
            if name == "flat":
                truth, recall = found, "ref"
            else:
                if truth is None:
                    flat = DemoIndex.build(pool, meta, source=BENCH_SOURCE, prefilter="none")
                    truth = flat.search(queries[: args.recall_queries], args.k)[1]
                recall = f"{recall_at_k(found, truth):.3f}"
            for threads in args.threads:
                faiss.omp_set_num_threads(threads)
                lat = latencies_ms(index, queries[: args.latency_queries], args.k)
                p50, p99 = np.percentile(lat, [50, 99])
                stats = index.prefilter_stats
                certified = (
                    f"{stats.certified / (stats.certified + stats.fallback):.1%}" if stats else "-"
                )
                rows.append(
                    f"{n:>8} {name:>6} {build_s:>8.2f} {threads:>7} {p50:>8.2f} {p99:>8.2f} "
                    f"{recall:>9} {certified:>9}"
                )
                logger.info(rows[-1])
            del index
    logger.info("load average after: %.2f (1 min)", os.getloadavg()[0])
    print("\n".join(rows))


if __name__ == "__main__":
    main()
