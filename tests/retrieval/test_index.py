"""DemoIndex against a brute-force numpy reference; saving, loading and refusing stale indexes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medcl.errors import InvalidInputError
from medcl.retrieval import index as index_mod
from medcl.retrieval.index import DemoIndex, IndexSource, fingerprint, search_subset

SRC = IndexSource(encoder="timm:test", encoder_sha256="ab" * 32, transform={"size": [8, 8]})


def _data(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    meta = pd.DataFrame(
        {
            "path": [f"img/{i:04d}.png" for i in range(n)],
            "label": rng.integers(0, 3, n),
            "domain": rng.choice(["h1", "h2"], n),
            "group": [f"p{i % 7}" for i in range(n)],
            "extra": rng.random(n),
        }
    )
    return x, meta


def _brute(pool: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """Top-k rows of ``pool`` by cosine similarity, -1 / -inf padded."""
    p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ p.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(sims, order, axis=1)
    order[~np.isfinite(scores)] = -1
    pad = k - order.shape[1]
    if pad > 0:
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, order


def test_exact_search_equals_brute_force() -> None:
    x, meta = _data(200)
    q = np.random.default_rng(1).normal(size=(9, 16))
    index = DemoIndex.build(x * 3.0, meta, source=SRC)  # scale: normalised inside
    scores, ids = index.search(q, 7)
    ref_scores, ref_ids = _brute(x, q, 7)
    assert (len(index), index.dim, index.kind) == (200, 16, "exact")
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (9, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_fewer_results_than_k_padded() -> None:
    x, meta = _data(3)
    scores, ids = DemoIndex.build(x, meta, source=SRC).search(x[:1], 5)
    assert ids[0].tolist()[3:] == [-1, -1] and sorted(ids[0, :3].tolist()) == [0, 1, 2]
    assert np.isneginf(scores[0, 3:]).all() and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_hnsw_recall_at_7() -> None:
    x, meta = _data(2000, d=32)
    q = np.random.default_rng(2).normal(size=(100, 32))
    index = DemoIndex.build(x, meta, kind="hnsw", source=SRC, m=16, ef_search=64)
    _, ids = index.search(q, 7)
    _, ref = _brute(x, q, 7)
    recall = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(ids, ref, strict=True)])
    assert recall >= 0.9
    assert index.options == {"m": 16, "ef_construction": 80, "ef_search": 64}


def test_ivf_trains_on_first_add_and_searches() -> None:
    x, meta = _data(300)
    index = DemoIndex.build(x[:0], meta.iloc[:0], kind="ivf", source=SRC, nlist=8, nprobe=8)
    assert len(index) == 0
    index.add(x, meta)
    scores, ids = index.search(x[:5], 4)  # nprobe == nlist: every cell visited, exact
    ref_scores, ref_ids = _brute(x, x[:5], 4)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_empty_index_returns_no_results() -> None:
    x, meta = _data(3)
    for kind, opts in (("exact", {}), ("ivf", {"nlist": 2})):
        index = DemoIndex.build(x[:0], meta.iloc[:0], kind=kind, source=SRC, **opts)
        for mask in (None, np.zeros(0, dtype=bool)):
            scores, ids = index.search(x[:2], 3, mask=mask)
            assert ids.tolist() == [[-1] * 3] * 2 and np.isneginf(scores).all()


def test_ivf_too_few_vectors() -> None:
    x, meta = _data(10)
    with pytest.raises(ValueError) as err:
        DemoIndex.build(x, meta, kind="ivf", source=SRC, nlist=16)
    assert str(err.value) == (
        "an ivf index with nlist=16 trains on its first add and needs at least 16 vectors, got 10"
    )


@pytest.mark.parametrize(
    ("kind", "opts"),
    [("exact", {}), ("hnsw", {"ef_search": 400}), ("ivf", {"nlist": 4, "nprobe": 4})],
)
def test_mask_restricts_results(kind: str, opts: dict[str, int]) -> None:
    x, meta = _data(400)
    q = np.random.default_rng(3).normal(size=(6, 16))
    mask = meta["label"].to_numpy() == 1
    index = DemoIndex.build(x, meta, kind=kind, source=SRC, **opts)
    scores, ids = index.search(q, 7, mask=mask)
    assert mask[ids[ids >= 0]].all() and (ids >= 0).all()
    ref_scores, ref_ids = _brute(x, q, 7, mask)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_sparse_mask_returns_every_allowed_row(kind: str) -> None:
    x, meta = _data(500)
    opts = {"nlist": 10, "nprobe": 1} if kind == "ivf" else {}
    mask = np.zeros(500, dtype=bool)
    mask[[5, 250, 499]] = True
    index = DemoIndex.build(x, meta, kind=kind, source=SRC, **opts)
    scores, ids = index.search(x[:4], 7, mask=mask)
    ref_scores, ref_ids = _brute(x, x[:4], 7, mask)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores[:, :3], ref_scores[:, :3], atol=1e-5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    empty = index.search(x[:1], 2, mask=np.zeros(500, dtype=bool))[1]
    assert empty.tolist() == [[-1, -1]]


@pytest.mark.parametrize(("kind", "opts"), [("exact", {}), ("hnsw", {}), ("ivf", {"nlist": 4})])
def test_search_subset_equals_brute_force(kind: str, opts: dict[str, int]) -> None:
    x, meta = _data(300)
    index = DemoIndex.build(x, meta, kind=kind, source=SRC, **opts)
    q = index_mod.normalised_matrix(np.random.default_rng(4).normal(size=(5, 16)), "queries")
    for rows in ([299, 3, 100], list(range(0, 300, 2))):
        mask = np.zeros(300, dtype=bool)
        mask[rows] = True
        for chunk in (7, 32768):
            scores, ids = search_subset(index._index, q, 7, np.array(rows), chunk=chunk)
            ref_scores, ref_ids = _brute(x, q, 7, mask)
            np.testing.assert_array_equal(ids, ref_ids)
            np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize(("kind", "opts"), [("exact", {}), ("ivf", {"nlist": 4, "nprobe": 4})])
def test_incremental_add_equals_one_build(kind: str, opts: dict[str, int]) -> None:
    x, meta = _data(120)
    q = np.random.default_rng(5).normal(size=(4, 16))
    whole = DemoIndex.build(x, meta, kind=kind, source=SRC, **opts)
    parts = DemoIndex.build(x[:50], meta.iloc[:50], kind=kind, source=SRC, **opts)
    before = parts.fingerprint
    parts.add(x[50:], meta.iloc[50:])
    assert len(parts) == 120 and parts.fingerprint == whole.fingerprint != before
    assert parts.fingerprint == SRC.fingerprint(list(meta["path"]))
    np.testing.assert_array_equal(parts.search(q, 6)[1], whole.search(q, 6)[1])
    pd.testing.assert_frame_equal(parts.metadata, whole.metadata)


@pytest.mark.parametrize(
    ("kind", "opts"), [("exact", {}), ("hnsw", {"m": 8}), ("ivf", {"nlist": 4, "nprobe": 2})]
)
def test_save_load_round_trip(tmp_path: Path, kind: str, opts: dict[str, int]) -> None:
    x, meta = _data(150)
    q = np.random.default_rng(6).normal(size=(5, 16))
    index = DemoIndex.build(x, meta, kind=kind, source=SRC, **opts)
    index.save(tmp_path / "idx")
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (info["kind"], info["dim"], info["count"], info["fingerprint"]) == (
        kind,
        16,
        150,
        index.fingerprint,
    )
    assert info["metadata_file"] == "metadata.parquet" and info["medcl_version"]
    loaded = DemoIndex.load(tmp_path / "idx", expected_fingerprint=SRC.fingerprint(meta["path"]))
    assert (loaded.kind, loaded.options, len(loaded)) == (kind, index.options, 150)
    for mask in (None, meta["domain"].to_numpy() == "h1"):
        a, b = index.search(q, 7, mask=mask), loaded.search(q, 7, mask=mask)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    pd.testing.assert_frame_equal(loaded.metadata, meta)
    loaded.add(x[:2], meta.iloc[:2])  # a loaded index grows and saves again
    loaded.save(tmp_path / "idx")
    grown = SRC.fingerprint([*meta["path"], *meta["path"][:2]])
    assert loaded.fingerprint == grown != index.fingerprint  # add() keeps the fingerprint true
    assert len(DemoIndex.load(tmp_path / "idx", expected_fingerprint=grown)) == 152
    with pytest.raises(InvalidInputError, match="index was built with encoder/pool fingerprint"):
        DemoIndex.load(tmp_path / "idx", expected_fingerprint=index.fingerprint)


def test_csv_metadata_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_has_pyarrow", lambda: False)
    x, meta = _data(20)
    meta["group"] = "007"  # text that looks like a number stays text
    DemoIndex.build(x, meta, source=SRC).save(tmp_path)
    assert (tmp_path / "metadata.csv").is_file()
    loaded = DemoIndex.load(tmp_path, expected_fingerprint=None)
    pd.testing.assert_frame_equal(loaded.metadata, meta, check_dtype=False)
    assert loaded.metadata["group"].tolist() == ["007"] * 20


def test_stale_fingerprint_refused(tmp_path: Path) -> None:
    x, meta = _data(10)
    DemoIndex.build(x, meta, source=SRC).save(tmp_path)
    fp = SRC.fingerprint(meta["path"])
    with pytest.raises(InvalidInputError) as err:
        DemoIndex.load(tmp_path, expected_fingerprint="bbbb")
    assert str(err.value) == (
        f"{tmp_path}: index was built with encoder/pool fingerprint {fp}, expected bbbb: "
        "rebuild it with medcl retrieval index"
    )


def test_index_without_source_or_with_edited_metadata_refused(tmp_path: Path) -> None:
    x, meta = _data(10)
    DemoIndex.build(x, meta, source=SRC).save(tmp_path)
    meta.iloc[:9].to_parquet(tmp_path / "metadata.parquet", index=False)
    info = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**info, "count": 10}))
    meta.assign(path=[f"other/{i}.png" for i in range(10)]).to_parquet(
        tmp_path / "metadata.parquet", index=False
    )
    with pytest.raises(InvalidInputError, match=r"metadata\.parquet does not match the"):
        DemoIndex.load(tmp_path, expected_fingerprint=None)
    del info["source"]  # an index.json of an older medcl
    (tmp_path / "index.json").write_text(json.dumps(info))
    with pytest.raises(InvalidInputError, match="does not record the encoder the index was built"):
        DemoIndex.load(tmp_path, expected_fingerprint=None)


def test_corrupt_or_missing_files_refused(tmp_path: Path) -> None:
    x, meta = _data(10)
    DemoIndex.build(x, meta, source=SRC).save(tmp_path)
    path, info_path = tmp_path / "index.faiss", tmp_path / "index.json"
    good, info = path.read_bytes(), json.loads(info_path.read_text())

    def problem() -> str:
        with pytest.raises(InvalidInputError) as err:
            DemoIndex.load(tmp_path, expected_fingerprint=SRC.fingerprint(meta["path"]))
        return err.value.problem

    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # inside the vectors: faiss would read it without complaint
    path.write_bytes(bytes(flipped))
    assert (
        problem() == "index.faiss does not match the checksum in index.json (corrupt or replaced)"
    )
    path.write_bytes(b"not a faiss index")
    info_path.write_text(
        json.dumps({**info, "index_sha256": hashlib.sha256(b"not a faiss index").hexdigest()})
    )
    assert problem() == "index.faiss is corrupt or unreadable"
    path.unlink()
    assert problem() == "index.faiss is missing"
    info_path.write_text("{not json")
    assert problem().startswith("index.json is malformed at (top level): Invalid JSON")
    info_path.write_text(json.dumps({k: v for k, v in info.items() if k != "dim"}))
    assert problem() == "index.json is malformed at dim: Field required"
    info_path.unlink()
    assert problem() == "index.json is missing: not a saved demonstration index"


def test_fingerprint_reference_and_order() -> None:
    blob = (
        '{"encoder":"vit_s","encoder_sha256":null,"pool":["a.png","b.png"],'
        '"transform":{"mean":[0.5],"size":224}}'
    )
    expected = hashlib.sha256(blob.encode()).hexdigest()[:16]
    fp = fingerprint("vit_s", None, ["b.png", "a.png"], {"size": 224, "mean": [0.5]})
    assert fp == expected and len(fp) == 16
    assert fingerprint("vit_s", None, ["a.png", "b.png"], {"mean": [0.5], "size": 224}) == fp
    others = {
        fingerprint("vit_b", None, ["a.png", "b.png"], {"mean": [0.5], "size": 224}),
        fingerprint("vit_s", "ff", ["a.png", "b.png"], {"mean": [0.5], "size": 224}),
        fingerprint("vit_s", None, ["a.png"], {"mean": [0.5], "size": 224}),
        fingerprint("vit_s", None, ["a.png", "b.png"], {"mean": [0.5], "size": 256}),
    }
    assert fp not in others and len(others) == 4
    with pytest.raises(ValueError, match="transform must be JSON-serialisable"):
        fingerprint("vit_s", None, [], {"fn": object()})


def test_bad_inputs() -> None:
    x, meta = _data(20)
    index = DemoIndex.build(x, meta, source=SRC)
    cases = [
        (
            lambda: index.search(np.ones((2, 8)), 3),
            "queries have dimension 8, the index has dimension 16",
        ),
        (
            lambda: index.search(np.full((1, 16), np.nan), 3),
            "queries contain NaN or infinite values",
        ),
        (
            lambda: index.search(np.zeros((1, 16)), 3),
            "queries row 0 has zero norm and cannot be L2-normalised",
        ),
        (lambda: index.search(x[:1], 0), "k must be at least 1, got 0"),
        (
            lambda: index.search(x[:1], 3, mask=np.ones(19, dtype=bool)),
            "mask must be a boolean array of shape (20,), got bool of shape (19,)",
        ),
        (
            lambda: DemoIndex.build(x, [1, 2], source=SRC),  # type: ignore[arg-type]
            "metadata must be a pandas DataFrame, got list",
        ),
        (lambda: index.add(x[:2], meta.iloc[:3]), "metadata has 3 rows but there are 2 embeddings"),
        (lambda: index.add(x[:2], meta.iloc[:2, :2]), "metadata lacks column(s): domain, group"),
        (
            lambda: index.add(np.ones((2, 4)), meta.iloc[:2]),
            "embeddings have dimension 4, the index has dimension 16",
        ),
        (
            lambda: DemoIndex.build(x, meta, kind="annoy", source=SRC),
            "unknown index kind 'annoy'; valid names: exact, hnsw, ivf",
        ),
        (
            lambda: DemoIndex.build(x, meta, kind="hnsw", source=SRC, M=8),
            "unknown option(s) for hnsw index: M; valid: ef_construction, ef_search, m",
        ),
        (
            lambda: DemoIndex.build(x, meta, kind="ivf", source=SRC, nlist=0),
            "ivf index option 'nlist': Input should be greater than or equal to 1",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
    assert len(index) == 20 and len(index.metadata) == 20  # failed adds changed nothing
