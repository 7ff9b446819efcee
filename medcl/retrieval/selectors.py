"""Demonstration selectors for in-context learning: pick ``k`` labelled pool items per query.

Zhou et al., "Adapting Large Multimodal Models to Distribution Shifts: The Role of In-Context
Learning", 2024, compare three ways to choose the demonstrations shown to a multimodal model:

* ``random`` (:class:`RandomPR`): uniform over the (filtered) pool, deterministic per seed;
* ``topk`` (:class:`TopKNearestPR`): the nearest pool items by cosine similarity in a frozen
  encoder's feature space;
* ``invariant`` (:class:`InvariantSelectPR`): the same nearest-neighbour rule in the space of the
  encoder fine-tuned with the CCI loss (:mod:`medcl.losses.cci`); only the embeddings differ.

Every selector shares the options users ask for: class-balanced selection (``max_per_class``),
never showing the query's own lesion / patient / slide (``exclude_group``), a pool restricted to
some domains (``domains``) and maximal-marginal-relevance diversity (``mmr_lambda``). For big pools
a precomputed candidate list (indices and scores from a vector index) replaces the brute-force
scan. The mathematics is plain numpy on l2-normalised vectors; :func:`class_agreement_at_k` and
:func:`knn_vote` score the selections.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from medcl.registry import Registry

log = logging.getLogger(__name__)

Candidates = tuple[np.ndarray, np.ndarray]
"""``(scores, indices)`` as FAISS and :meth:`medcl.retrieval.index.DemoIndex.search` return them:
each ``(C,)`` for one query or ``(M, C)`` for ``M``, best first; indices are integer pool rows and
``-1`` (FAISS's "no result") is skipped. Scores should be cosine similarities (inner products of
l2-normalised vectors), comparable with the pool similarities that MMR uses."""


@dataclass(frozen=True)
class Selection:
    """The demonstrations chosen for one query, best first.

    Attributes:
        indices: ``(k',)`` int64 rows of the pool, ``k' <= k``.
        scores: ``(k',)`` float64 similarity of each to the query (cosine, or the candidate score).
    """

    indices: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x`` with each row divided by its l2 norm (zero rows stay zero).

    float32 stays float32 (a big pool is not doubled in memory); anything else becomes float64.
    """
    x = np.asarray(x)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def valid_pool_mask(
    pool_meta: pd.DataFrame,
    *,
    domains: Sequence[str] | None = None,
    exclude_group: str | None = None,
) -> np.ndarray:
    """``(N,)`` bool: rows whose ``domain`` is in ``domains`` and whose ``group`` is not
    ``exclude_group`` (each filter off when ``None``)."""
    mask = np.ones(len(pool_meta), dtype=bool)
    if domains is not None:
        mask &= pool_meta["domain"].astype(str).isin([str(d) for d in domains]).to_numpy()
    if exclude_group is not None:
        mask &= (pool_meta["group"].astype(str) != str(exclude_group)).to_numpy()
    return mask


def fill_in_order(
    order: np.ndarray, labels: np.ndarray | None, k: int, max_per_class: int | None
) -> np.ndarray:
    """Positions of the first ``k`` items of ``order`` with at most ``max_per_class`` per label.

    Args:
        order: ``(C,)`` candidates, best first (only their positions are used).
        labels: ``(C,)`` label of each candidate; needed when ``max_per_class`` is set.
    """
    if max_per_class is None or labels is None:
        return np.arange(min(k, len(order)))
    counts: dict[object, int] = {}
    picked: list[int] = []
    for pos in range(len(order)):
        c = labels[pos]
        if counts.get(c, 0) < max_per_class:
            counts[c] = counts.get(c, 0) + 1
            picked.append(pos)
            if len(picked) == k:
                break
    return np.asarray(picked, dtype=np.int64)


def mmr_in_order(
    emb: np.ndarray,
    rows: np.ndarray,
    query_sims: np.ndarray,
    k: int,
    lam: float,
    labels: np.ndarray | None = None,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Maximal marginal relevance: positions picked greedily by
    ``lam * sim(q, d) - (1 - lam) * max_{s in selected} sim(d, s)`` (penalty 0 for the first).

    Args:
        emb: ``(N, D)`` l2-normalised embeddings.
        rows: ``(C,)`` rows of ``emb`` that are candidates, best first (ties go to the earlier).
        query_sims: ``(C,)`` similarity of each candidate to the query.
        labels, max_per_class: as :func:`fill_in_order`; a full class is skipped.

    Returns:
        Positions into ``rows`` in the order picked.
    """
    remaining = np.ones(len(rows), dtype=bool)
    max_sim = np.full(len(rows), -np.inf)
    counts: dict[object, int] = {}
    picked: list[int] = []
    while len(picked) < k and remaining.any():
        penalty = max_sim if picked else np.zeros_like(max_sim)
        score = np.where(remaining, lam * query_sims - (1.0 - lam) * penalty, -np.inf)
        pos = int(np.argmax(score))
        remaining[pos] = False
        if max_per_class is not None and labels is not None:
            c = labels[pos]
            if counts.get(c, 0) >= max_per_class:
                continue
            counts[c] = counts.get(c, 0) + 1
        picked.append(pos)
        # one (N, D) product without gathering the candidate rows first
        max_sim = np.maximum(max_sim, (emb @ emb[rows[pos]])[rows])
    return np.asarray(picked, dtype=np.int64)


class DemonstrationSelector(ABC):
    """Picks ``k`` demonstrations from a labelled pool for each query embedding.

    Args:
        max_per_class: at most this many demonstrations per class (filled greedily by score);
            None for no limit. Needs a ``label`` column in ``pool_meta``.
        exclude_group: never return a pool item of the query's own group (lesion, patient, slide)
            when ``query_group`` is given. Needs a ``group`` column.
        domains: keep only pool items of these domains; None for all. Needs a ``domain`` column.
        mmr_lambda: maximal marginal relevance in ``[0, 1]`` (1 = pure similarity); None for off.
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        max_per_class: int | None = None,
        exclude_group: bool = True,
        domains: Sequence[str] | None = None,
        mmr_lambda: float | None = None,
    ) -> None:
        if max_per_class is not None and (
            isinstance(max_per_class, bool)
            or not isinstance(max_per_class, int)
            or max_per_class < 1
        ):
            raise ValueError(
                f"max_per_class must be an integer >= 1 or None, got {max_per_class!r}"
            )
        if not isinstance(exclude_group, bool):
            raise ValueError(f"exclude_group must be a bool, got {exclude_group!r}")
        if domains is not None and (isinstance(domains, str) or len(domains) == 0):
            raise ValueError(f"domains must be a non-empty list of names or None, got {domains!r}")
        if mmr_lambda is not None and not (
            isinstance(mmr_lambda, int | float)
            and not isinstance(mmr_lambda, bool)
            and 0.0 <= mmr_lambda <= 1.0
        ):
            raise ValueError(f"mmr_lambda must be a number in [0, 1] or None, got {mmr_lambda!r}")
        self.max_per_class = max_per_class
        self.exclude_group = exclude_group
        self.domains = None if domains is None else [str(d) for d in domains]
        self.mmr_lambda = None if mmr_lambda is None else float(mmr_lambda)

    @abstractmethod
    def rank(
        self,
        query: np.ndarray,
        pool_emb: np.ndarray,
        valid: np.ndarray,
        candidates: Candidates | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Valid pool rows in selection order, and their similarity to ``query`` ``(D,)``.

        ``pool_emb`` is ``(N, D)``, its rows l2-normalised when ``candidates`` is None (a full
        scan); ``valid`` is the ``(N,)`` bool mask left by the filters.
        """

    def select(
        self,
        query_emb: np.ndarray,
        pool_emb: np.ndarray,
        pool_meta: pd.DataFrame,
        k: int,
        *,
        query_group: str | Sequence[str | None] | None = None,
        rng: np.random.Generator | int | None = None,
        candidates: Candidates | None = None,
    ) -> list[Selection]:
        """One :class:`Selection` per query (a list of one for a ``(D,)`` query).

        Args:
            query_emb: ``(D,)`` or ``(M, D)`` query embeddings.
            pool_emb: ``(N, D)`` pool embeddings (same encoder).
            pool_meta: ``N`` rows with the columns the options need (``label``, ``domain``,
                ``group``), in the order of ``pool_emb``.
            k: demonstrations per query; fewer come back (with a warning) when fewer are valid.
            query_group: the group of each query (one name for all, or ``M`` names / None).
            rng: a generator or seed (used by ``random``).
            candidates: optional nearest candidates from a vector index (see :data:`Candidates`).
        """
        queries = np.asarray(query_emb, dtype=np.float64)
        single = queries.ndim == 1
        queries = queries[None] if single else queries
        pool = np.asarray(pool_emb)
        if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
            raise ValueError(
                f"query_emb must be (D,) or (M, D) and pool_emb (N, D) with the same D, "
                f"got {np.shape(query_emb)} and {pool.shape}"
            )
        if len(pool_meta) != pool.shape[0]:
            raise ValueError(f"pool_meta has {len(pool_meta)} rows but pool_emb {pool.shape[0]}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        m = queries.shape[0]
        groups = self._query_groups(query_group, m)
        self._check_columns(pool_meta, any(g is not None for g in groups))
        cands = _split_candidates(candidates, m, pool.shape[0], single)
        labels = pool_meta["label"].to_numpy() if self.max_per_class is not None else None
        base = valid_pool_mask(pool_meta, domains=self.domains)
        pool_groups = None
        if any(g is not None for g in groups):
            pool_groups = pool_meta["group"].astype(str).to_numpy()
        if candidates is None:  # a full scan: normalise the pool once, not once per query
            pool = normalize_rows(pool)
        gen = np.random.default_rng(rng)
        out: list[Selection] = []
        for i in range(m):
            valid = base
            if pool_groups is not None and groups[i] is not None:
                valid = base & (pool_groups != groups[i])
            order, sims = self.rank(queries[i], pool, valid, cands[i], gen)
            cls = None if labels is None else labels[order]
            if self.mmr_lambda is None:
                pos = fill_in_order(order, cls, k, self.max_per_class)
            else:
                # a scanned pool is normalised already; candidate rows are normalised here
                emb, rows = (
                    (pool, order)
                    if candidates is None
                    else (normalize_rows(pool[order]), np.arange(len(order)))
                )
                pos = mmr_in_order(emb, rows, sims, k, self.mmr_lambda, cls, self.max_per_class)
            out.append(Selection(order[pos].astype(np.int64), sims[pos].astype(np.float64)))
        short = [len(s) for s in out if len(s) < k]
        if short:
            log.warning(
                "%s: %d of %d queries got fewer than k=%d demonstrations (fewest: %d); the "
                "filters leave too few pool items%s",
                self.name,
                len(short),
                m,
                k,
                min(short),
                " or the candidate lists are too short" if candidates is not None else "",
            )
        return out

    def select_one(
        self,
        query_emb: np.ndarray,
        pool_emb: np.ndarray,
        pool_meta: pd.DataFrame,
        k: int,
        *,
        query_group: str | None = None,
        rng: np.random.Generator | int | None = None,
        candidates: Candidates | None = None,
    ) -> Selection:
        """:meth:`select` for one ``(D,)`` query."""
        if np.ndim(query_emb) != 1:
            raise ValueError(f"select_one takes one (D,) query, got {np.shape(query_emb)}")
        (sel,) = self.select(
            query_emb,
            pool_emb,
            pool_meta,
            k,
            query_group=query_group,
            rng=rng,
            candidates=candidates,
        )
        return sel

    def _query_groups(
        self, query_group: str | Sequence[str | None] | None, m: int
    ) -> list[str | None]:
        if not self.exclude_group or query_group is None:
            return [None] * m
        if isinstance(query_group, str):
            return [query_group] * m
        groups = list(query_group)
        if len(groups) != m:
            raise ValueError(f"query_group has {len(groups)} entries for {m} queries")
        return [None if g is None else str(g) for g in groups]

    def _check_columns(self, pool_meta: pd.DataFrame, needs_group: bool) -> None:
        needed = [
            ("label", "max_per_class", self.max_per_class is not None),
            ("domain", "domains", self.domains is not None),
            ("group", "exclude_group", needs_group),
        ]
        for column, option, used in needed:
            if used and column not in pool_meta.columns:
                raise ValueError(f"pool_meta lacks the column '{column}' needed by {option}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_per_class={self.max_per_class}, exclude_group="
            f"{self.exclude_group}, domains={self.domains}, mmr_lambda={self.mmr_lambda})"
        )


def _split_candidates(
    candidates: Candidates | None, m: int, n: int, single: bool
) -> list[Candidates | None]:
    if candidates is None:
        return [None] * m
    scores, idx = (np.asarray(a) for a in candidates)
    if single and idx.ndim == 1:
        scores, idx = scores[None], idx[None]
    if idx.shape != scores.shape or idx.ndim != 2 or idx.shape[0] != m:
        raise ValueError(
            f"candidates must be (scores, indices) of shape (M, C) with M={m}, "
            f"got {scores.shape} and {idx.shape}"
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"candidate indices must be integers, got dtype {idx.dtype}")
    if idx.size and idx.max() >= n:
        raise ValueError(f"candidate index {int(idx.max())} is outside the pool of {n} items")
    return [(scores[i], idx[i]) for i in range(m)]


class TopKNearestPR(DemonstrationSelector):
    """The ``k`` nearest pool items by cosine similarity (ties go to the lower pool row)."""

    name = "topk"

    def rank(
        self,
        query: np.ndarray,
        pool_emb: np.ndarray,
        valid: np.ndarray,
        candidates: Candidates | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        if candidates is None:
            rows = np.flatnonzero(valid)
            sims = (pool_emb @ normalize_rows(query).astype(pool_emb.dtype))[rows]
        else:
            scores, idx = candidates
            keep = idx >= 0
            idx, scores = idx[keep].astype(np.int64), scores[keep].astype(np.float64)
            _, first = np.unique(idx, return_index=True)  # a row listed twice counts once
            first = np.sort(first)
            idx, scores = idx[first], scores[first]
            rows, sims = idx[valid[idx]], scores[valid[idx]]
        order = np.argsort(-sims, kind="stable")
        return rows[order], sims[order]


class InvariantSelectPR(TopKNearestPR):
    """InvariantSelectPR: :class:`TopKNearestPR` over embeddings of the CCI-fine-tuned encoder."""

    name = "invariant"


class RandomPR(DemonstrationSelector):
    """Uniformly random valid pool items (the same filters; deterministic per ``rng`` seed)."""

    name = "random"

    def __init__(
        self,
        *,
        max_per_class: int | None = None,
        exclude_group: bool = True,
        domains: Sequence[str] | None = None,
        mmr_lambda: float | None = None,
    ) -> None:
        if mmr_lambda is not None:
            raise ValueError("mmr_lambda does not apply to the random selector")
        super().__init__(max_per_class=max_per_class, exclude_group=exclude_group, domains=domains)

    def rank(
        self,
        query: np.ndarray,
        pool_emb: np.ndarray,
        valid: np.ndarray,
        candidates: Candidates | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        if candidates is not None:
            raise ValueError("the random selector samples the whole pool; candidates do not apply")
        rows = rng.permutation(np.flatnonzero(valid))
        return rows, (pool_emb @ normalize_rows(query).astype(pool_emb.dtype))[rows]


SELECTORS: Registry[DemonstrationSelector] = Registry("selector")
for _cls in (RandomPR, TopKNearestPR, InvariantSelectPR):
    SELECTORS.register(_cls.name)(_cls)


def create_selector(name: str, **kwargs: object) -> DemonstrationSelector:
    """Build the selector registered as ``name`` (``random``, ``topk``, ``invariant``)."""
    return SELECTORS.create(name, **kwargs)


def list_selectors() -> list[str]:
    """The registered selector names, sorted."""
    return SELECTORS.names()
