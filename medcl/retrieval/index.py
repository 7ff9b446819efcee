"""A FAISS index over a demonstration pool: cosine search with the pool's metadata beside it.

Embeddings are L2-normalised on the way in (pool and queries), so FAISS's inner product is the
cosine similarity. Kinds (``INDEX_KINDS``): ``exact`` (``IndexFlatIP``), ``hnsw``
(``IndexHNSWFlat``, inner product; options ``m``, ``ef_construction``, ``ef_search``) and ``ivf``
(``IndexIVFFlat``, inner product; options ``nlist``, ``nprobe``; trained on its first add).
Row ``i`` of the metadata frame (``path, label, domain, group`` and any extra columns) describes
vector ``i``. A saved index is a folder: ``index.faiss``, ``metadata.parquet`` (``metadata.csv``
when pyarrow is absent) and ``index.json`` (kind, dim, count, source, fingerprint, options,
version, time); :meth:`DemoIndex.load` refuses an index built from another encoder or pool.

The fingerprint is never stored as an opaque label: it is computed from the index's
:class:`IndexSource` (encoder name, weights sha256, eval transform) and the paths of the vectors
it holds, so :meth:`DemoIndex.add` keeps it true, and a caller compares it with the fingerprint
of *its* encoder over *its* current pool (:func:`medcl.retrieval.pool.open_pool_index`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from medcl import __version__
from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.registry import Registry
from medcl.retrieval.certified import Int8Prefilter, PrefilterStats

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "domain", "group")
INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
_TEXT_COLUMNS = {"path": str, "domain": str, "group": str}
_DirectMap: Any = faiss.DirectMap  # type: ignore[attr-defined]  # missing from faiss's stubs


class ExactOptions(StrictModel):
    """``exact``: brute-force inner product.

    ``prefilter``: ``auto`` (pools of ``prefilter_min_size`` vectors or more), ``int8`` or
    ``none``: answer unfiltered searches with an int8 scan, a float32 re-rank of ``candidates``
    vectors and a certificate that the result equals brute force
    (:mod:`medcl.retrieval.certified`); uncertified queries fall back to the full scan.
    """

    prefilter: Literal["auto", "int8", "none"] = "auto"
    prefilter_min_size: int = Field(20_000, ge=1)
    candidates: int = Field(128, ge=1)


class HNSWOptions(StrictModel):
    """``hnsw``: graph degree ``m``, build beam ``ef_construction``, search beam ``ef_search``."""

    m: int = Field(32, ge=2)
    ef_construction: int = Field(80, ge=1)
    ef_search: int = Field(64, ge=1)


class IVFOptions(StrictModel):
    """``ivf``: ``nlist`` k-means cells, ``nprobe`` of them visited per query."""

    nlist: int = Field(100, ge=1)
    nprobe: int = Field(8, ge=1)


class IndexKind:
    """One kind of FAISS index: its options, how to build it, how to restrict its search.

    ``params`` returns FAISS search parameters carrying an id selector (all three kinds filter
    while searching); the index must also reconstruct its vectors (see :func:`search_subset`).
    """

    options: type[StrictModel] = ExactOptions
    faiss_type: Any = faiss.IndexFlatIP

    def make(self, dim: int, o: Any) -> Any:
        return faiss.IndexFlatIP(dim)

    def configure(self, index: Any, o: Any) -> None:
        """Set the search-time options on ``index`` (after building or loading)."""

    def params(self, sel: Any, o: Any) -> Any:
        return faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]  # incomplete stubs


class HNSWKind(IndexKind):
    options = HNSWOptions
    faiss_type = faiss.IndexHNSWFlat

    def make(self, dim: int, o: HNSWOptions) -> Any:
        index = faiss.IndexHNSWFlat(dim, o.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = o.ef_construction
        return index

    def configure(self, index: Any, o: HNSWOptions) -> None:
        index.hnsw.efSearch = o.ef_search

    def params(self, sel: Any, o: HNSWOptions) -> Any:
        hnsw_params = faiss.SearchParametersHNSW  # type: ignore[attr-defined]  # incomplete stubs
        return hnsw_params(sel=sel, efSearch=o.ef_search)


class IVFKind(IndexKind):
    options = IVFOptions
    faiss_type = faiss.IndexIVFFlat

    def make(self, dim: int, o: IVFOptions) -> Any:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, o.nlist, faiss.METRIC_INNER_PRODUCT)
        index.set_direct_map_type(_DirectMap.Array)  # row -> vector, for reconstruct
        return index

    def configure(self, index: Any, o: IVFOptions) -> None:
        index.nprobe = o.nprobe
        if index.direct_map.type == _DirectMap.NoMap:
            index.make_direct_map()

    def params(self, sel: Any, o: IVFOptions) -> Any:
        return faiss.SearchParametersIVF(sel=sel, nprobe=o.nprobe)  # type: ignore[call-arg]


INDEX_KINDS: Registry[IndexKind] = Registry("index kind")
INDEX_KINDS.register("exact")(IndexKind)
INDEX_KINDS.register("hnsw")(HNSWKind)
INDEX_KINDS.register("ivf")(IVFKind)


def _parse_options(kind: str, spec: IndexKind, opts: Mapping[str, Any]) -> StrictModel:
    valid = sorted(spec.options.model_fields)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) for {kind} index: {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    try:
        return spec.options(**opts)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{kind} index option '{first['loc'][0]}': {first['msg']}") from None


def fingerprint(
    encoder_name: str,
    encoder_sha256: str | None,
    pool_paths: Sequence[str],
    transform: Mapping[str, Any],
) -> str:
    """A stable 16-hex-digit id of what an index was built from.

    The sha256 of the compact JSON (sorted keys) of ``{"encoder": encoder_name,
    "encoder_sha256": encoder_sha256, "pool": sorted(pool_paths), "transform": transform}``,
    cut to its first 16 hex digits. The pool is sorted, so its order does not matter (duplicates
    do). ``transform`` must be JSON-serialisable (``ValueError`` otherwise).
    """
    payload = {
        "encoder": encoder_name,
        "encoder_sha256": encoder_sha256,
        "pool": sorted(str(p) for p in pool_paths),
        "transform": dict(transform),
    }
    try:
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"transform must be JSON-serialisable: {exc}") from None
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class IndexSource(StrictModel):
    """What the vectors of an index were computed with (the pool is the metadata's paths)."""

    encoder: str
    encoder_sha256: str | None = None
    transform: dict[str, Any] = Field(default_factory=dict)

    def fingerprint(self, pool_paths: Sequence[str]) -> str:
        """:func:`fingerprint` of this encoder over ``pool_paths``."""
        return fingerprint(self.encoder, self.encoder_sha256, pool_paths, self.transform)


def normalised_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` (N, D) checked (2-D, finite, no zero rows, ``D == dim``), L2-normalised, float32."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, the index has dimension {dim}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"{name} row {row} has zero norm and cannot be L2-normalised")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``min(k, C)`` values of each row of ``sims`` (M, C), best first, and columns."""
    top = min(k, sims.shape[1])
    cols = np.argpartition(-sims, top - 1, axis=1)[:, :top]
    vals = np.take_along_axis(sims, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(cols, order, axis=1)


def search_subset(
    index: Any, queries: np.ndarray, k: int, rows: np.ndarray, *, chunk: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products among the pool ``rows`` only.

    The rows' vectors are read back from ``index`` (``reconstruct_batch``) ``chunk`` at a time,
    so the cost is ``len(rows) x D`` per query whatever the pool size.

    Args:
        index: a FAISS index that can reconstruct its vectors.
        queries: (M, D) float32, normalised.
        rows: (R,) int64 pool rows allowed.

    Returns:
        scores (M, k) float32 and indices (M, k) int64; ``-inf`` / ``-1`` past ``R`` results.
    """
    m = queries.shape[0]
    scores = np.full((m, k), -np.inf, dtype=np.float32)
    ids = np.full((m, k), -1, dtype=np.int64)
    if rows.size == 0:
        return scores, ids
    best_s, best_i = [], []
    for start in range(0, rows.size, chunk):
        part = rows[start : start + chunk]
        s, cols = _top_k(queries @ index.reconstruct_batch(part).T, k)
        best_s.append(s)
        best_i.append(part[cols])
    s, cols = _top_k(np.concatenate(best_s, axis=1), k)
    scores[:, : s.shape[1]] = s
    ids[:, : s.shape[1]] = np.take_along_axis(np.concatenate(best_i, axis=1), cols, axis=1)
    return scores, ids


def _check_metadata(metadata: pd.DataFrame, rows: int) -> pd.DataFrame:
    if not isinstance(metadata, pd.DataFrame):
        raise ValueError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(f"metadata lacks column(s): {', '.join(missing)}")
    if len(metadata) != rows:
        raise ValueError(f"metadata has {len(metadata)} rows but there are {rows} embeddings")
    return metadata.reset_index(drop=True)


def _has_pyarrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


class _IndexInfo(StrictModel):
    """The contents of ``index.json``."""

    kind: str
    dim: int = Field(ge=1)
    count: int = Field(ge=0)
    source: IndexSource | None = None  # None: written by medcl before the source was stored
    fingerprint: str
    options: dict[str, Any]
    metadata_file: str
    index_sha256: str
    medcl_version: str
    created: str


class DemoIndex:
    """Cosine-similarity search over a demonstration pool, with the pool's metadata.

    Build with :meth:`build` or :meth:`load`; do not call the constructor directly.
    ``metadata`` row ``i`` describes vector ``i``; treat it as read-only.
    """

    def __init__(
        self,
        index: Any,
        metadata: pd.DataFrame,
        kind: str,
        options: StrictModel,
        source: IndexSource,
    ) -> None:
        self._index, self.metadata, self._kind, self._options = index, metadata, kind, options
        self._spec = INDEX_KINDS.create(kind)
        self.source = source
        self._spec.configure(index, options)
        self._prefilter: Int8Prefilter | None = None

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        metadata: pd.DataFrame,
        *,
        kind: str = "exact",
        source: IndexSource,
        **opts: Any,
    ) -> DemoIndex:
        """Index ``embeddings`` (N, D) described by ``metadata`` (N rows), made by ``source``.

        ``N`` may be 0 (an ``ivf`` index then trains on its first :meth:`add`). ``opts`` are the
        kind's options (:class:`HNSWOptions`, :class:`IVFOptions`); unknown ones are errors.
        """
        spec = INDEX_KINDS.create(kind)
        options = _parse_options(kind, spec, opts)
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {x.shape}")
        empty = _check_metadata(metadata, x.shape[0]).iloc[:0]
        out = cls(spec.make(x.shape[1], options), empty, kind, options, source)
        out.add(x, metadata)
        return out

    @property
    def fingerprint(self) -> str:
        """The source's fingerprint over the paths the index holds now (true after ``add``)."""
        return self.source.fingerprint(self.metadata["path"].astype(str).tolist())

    @property
    def dim(self) -> int:
        """Dimension ``D`` of the vectors."""
        return int(self._index.d)

    @property
    def kind(self) -> str:
        """``exact``, ``hnsw`` or ``ivf``."""
        return self._kind

    @property
    def options(self) -> dict[str, Any]:
        """The kind's resolved options."""
        return self._options.model_dump()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, embeddings: np.ndarray, metadata: pd.DataFrame) -> None:
        """Append ``embeddings`` (N, D) and their ``metadata`` (N rows); ids continue from len."""
        x = normalised_matrix(embeddings, "embeddings", self.dim)
        meta = _check_metadata(metadata, x.shape[0])
        if not x.shape[0]:
            return
        if not self._index.is_trained:
            nlist = self._index.nlist
            if x.shape[0] < nlist:
                raise ValueError(
                    f"an ivf index with nlist={nlist} trains on its first add and needs at "
                    f"least {nlist} vectors, got {x.shape[0]}"
                )
            self._index.train(x)
        self._index.add(x)
        self._prefilter = None  # rebuilt over all vectors at the next search
        self.metadata = pd.concat([self.metadata, meta], ignore_index=True)

    def search(
        self, queries: np.ndarray, k: int, *, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most cosine-similar pool vectors of each query.

        Args:
            queries: (M, D) embeddings (normalised here).
            k: results per query, >= 1.
            mask: optional (N,) bool over the pool; only ``True`` rows may be returned.

        Returns:
            scores (M, k) float32 cosine similarities, best first, and indices (M, k) int64 rows
            of the pool; ``-1`` (score ``-inf``) where fewer than ``k`` candidates were found.
        """
        q = normalised_matrix(queries, "queries", self.dim)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (len(self),):
                raise ValueError(
                    f"mask must be a boolean array of shape ({len(self)},), "
                    f"got {mask.dtype} of shape {mask.shape}"
                )
        if not len(self):
            scores, ids = np.zeros((len(q), k)), np.full((len(q), k), -1)
        elif mask is None and (pre := self._exact_prefilter(k)) is not None:
            scores, ids = pre.search(q, k, self._index)
        elif mask is None:
            scores, ids = self._index.search(q, k)
        else:
            scores, ids = self._search_masked(q, k, mask)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids.astype(np.int64)

    def _exact_prefilter(self, k: int) -> Int8Prefilter | None:
        """The int8 prefilter of an ``exact`` index when its options ask for one."""
        o = self._options
        if not isinstance(o, ExactOptions) or o.prefilter == "none" or k > len(self):
            return None
        if o.prefilter == "auto" and len(self) < o.prefilter_min_size:
            return None
        if self._prefilter is None or len(self._prefilter) != len(self):
            vectors = self._index.reconstruct_n(0, len(self))
            self._prefilter = Int8Prefilter(vectors, candidates=o.candidates)
        return self._prefilter

    @property
    def prefilter_stats(self) -> PrefilterStats | None:
        """Certified and fallback query counts of the exact int8 prefilter, if it ran."""
        return None if self._prefilter is None else self._prefilter.stats

    def _search_masked(self, q: np.ndarray, k: int, mask: np.ndarray) -> tuple[Any, Any]:
        selected = np.flatnonzero(mask).astype(np.int64)
        sel = faiss.IDSelectorBatch(selected)
        scores, ids = self._index.search(q, k, params=self._spec.params(sel, self._options))
        # graph / cell search filters what it visits, so under a sparse mask it can miss allowed
        # rows (HNSW, IVF): redo the short rows exactly over the allowed rows
        short = (ids >= 0).sum(axis=1) < min(k, selected.size)
        if short.any():
            logger.debug("masked search: %d of %d rows short, exact", short.sum(), len(q))
            scores[short], ids[short] = search_subset(self._index, q[short], k, selected)
        return scores, ids

    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss``, the metadata and ``index.json`` (last) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INFO_FILE).unlink(missing_ok=True)  # an interrupted save leaves no valid index
        faiss.write_index(self._index, str(folder / INDEX_FILE))
        if _has_pyarrow():
            meta_name = "metadata.parquet"
            self.metadata.to_parquet(folder / meta_name, index=False)
        else:
            meta_name = "metadata.csv"
            self.metadata.to_csv(folder / meta_name, index=False)
        info = _IndexInfo(
            kind=self.kind,
            dim=self.dim,
            count=len(self),
            source=self.source,
            fingerprint=self.fingerprint,
            options=self.options,
            metadata_file=meta_name,
            index_sha256=_sha256(folder / INDEX_FILE),
            medcl_version=__version__,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        (folder / INFO_FILE).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
        logger.info("saved %s index of %d vectors to %s", self.kind, len(self), folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, expected_fingerprint: str | None) -> DemoIndex:
        """Read a folder written by :meth:`save`.

        The fingerprint is recomputed from the stored source and metadata paths, so a metadata
        file edited after saving is caught too.

        Raises:
            InvalidInputError: missing or corrupt files, an index without a stored source
                (written by an older medcl), or a fingerprint other than ``expected_fingerprint``
                (``None`` skips that check).
        """
        folder = Path(folder)
        info = _read_info(folder)
        if info.source is None:
            raise InvalidInputError(
                folder,
                f"{INFO_FILE} does not record the encoder the index was built with (an older "
                "medcl wrote it): rebuild it with medcl retrieval index",
            )
        if expected_fingerprint is not None and info.fingerprint != expected_fingerprint:
            raise InvalidInputError(
                folder,
                f"index was built with encoder/pool fingerprint {info.fingerprint}, expected "
                f"{expected_fingerprint}: rebuild it with medcl retrieval index",
            )
        spec = INDEX_KINDS.create(info.kind)
        options = _parse_options(info.kind, spec, info.options)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise InvalidInputError(folder, f"{INDEX_FILE} is missing")
        if _sha256(path) != info.index_sha256:
            raise InvalidInputError(
                folder,
                f"{INDEX_FILE} does not match the checksum in {INFO_FILE} (corrupt or replaced)",
            )
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise InvalidInputError(folder, f"{INDEX_FILE} is corrupt or unreadable") from None
        inner = index.metric_type == faiss.METRIC_INNER_PRODUCT
        if not isinstance(index, spec.faiss_type) or not inner:
            raise InvalidInputError(
                folder, f"{INDEX_FILE} is not an inner-product {info.kind} index"
            )
        if (index.d, index.ntotal) != (info.dim, info.count):
            raise InvalidInputError(
                folder,
                f"{INDEX_FILE} holds {index.ntotal} vectors of dimension {index.d}, "
                f"{INFO_FILE} says {info.count} of dimension {info.dim}",
            )
        metadata = _read_metadata(folder, info)
        out = cls(index, metadata, info.kind, options, info.source)
        if out.fingerprint != info.fingerprint:
            raise InvalidInputError(
                folder,
                f"{info.metadata_file} does not match the fingerprint in {INFO_FILE} "
                f"({out.fingerprint} vs {info.fingerprint}): edited after saving",
            )
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_info(folder: Path) -> _IndexInfo:
    if not folder.is_dir():
        raise InvalidInputError(folder, "not a folder (a saved demonstration index expected)")
    path = folder / INFO_FILE
    if not path.is_file():
        raise InvalidInputError(folder, f"{INFO_FILE} is missing: not a saved demonstration index")
    try:
        return _IndexInfo.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InvalidInputError(
            folder, f"{INFO_FILE} is malformed at {where}: {first['msg']}"
        ) from None


def _read_metadata(folder: Path, info: _IndexInfo) -> pd.DataFrame:
    path = folder / info.metadata_file
    if info.metadata_file not in ("metadata.parquet", "metadata.csv"):
        raise InvalidInputError(folder, f"{INFO_FILE} names an unknown metadata file")
    if not path.is_file():
        raise InvalidInputError(folder, f"{info.metadata_file} is missing")
    try:
        if path.suffix == ".parquet":
            metadata = pd.read_parquet(path)
        else:
            metadata = pd.read_csv(path, dtype=_TEXT_COLUMNS)
    except ImportError:
        raise InvalidInputError(
            folder, f"{info.metadata_file} needs pyarrow to be read: pip install pyarrow"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(folder, f"{info.metadata_file} is corrupt: {exc}") from None
    try:
        return _check_metadata(metadata, info.count)
    except ValueError as exc:
        raise InvalidInputError(path, str(exc)) from None
