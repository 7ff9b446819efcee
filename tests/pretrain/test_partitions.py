"""Partition sampling: bin boundaries by the formula, the error for thin volumes, the sampler."""

from __future__ import annotations

import itertools

import pytest

from medcl.errors import MedclError
from medcl.pretrain.partitions import (
    PartitionBatchSampler,
    SliceIndex,
    TooFewSlicesError,
    partition_of_slices,
)


def _expected_partitions(depth: int, n_parts: int) -> list[int]:
    # Partition p holds z with p*depth/S <= z < (p+1)*depth/S,
    # in integers: p*depth <= z*S < (p+1)*depth.
    out = []
    for z in range(depth):
        hits = [p for p in range(n_parts) if p * depth <= z * n_parts < (p + 1) * depth]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_partition_hand_computed_case() -> None:
    assert partition_of_slices(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert partition_of_slices(4, 4).tolist() == [0, 1, 2, 3]
    assert partition_of_slices(5, 1).tolist() == [0] * 5


@pytest.mark.parametrize(
    ("depth", "n_parts"), [(10, 4), (4, 4), (7, 3), (12, 4), (13, 5), (100, 4), (31, 7), (1, 1)]
)
def test_partition_boundaries_match_formula(depth: int, n_parts: int) -> None:
    parts = partition_of_slices(depth, n_parts)
    assert parts.shape == (depth,)
    assert parts.tolist() == _expected_partitions(depth, n_parts)
    # contiguous, non-decreasing, every partition present
    assert sorted(set(parts.tolist())) == list(range(n_parts))
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(parts))


def test_too_many_partitions_names_both() -> None:
    with pytest.raises(TooFewSlicesError, match=r"S=6 partitions but volume 'x' has only 4 slices"):
        partition_of_slices(4, 6, volume_id="x")
    with pytest.raises(MedclError, match="'thin' has only 3 slices"):
        SliceIndex({"a": 10, "thin": 3}, S=4)
    with pytest.raises(ValueError, match="S must be a positive"):
        partition_of_slices(4, 0)


def test_slice_index_entries() -> None:
    index = SliceIndex([("a", 10), ("b", 5), ("c", 8)], S=4)
    assert len(index) == 23
    flat = 0
    for name, depth in (("a", 10), ("b", 5), ("c", 8)):
        expected = _expected_partitions(depth, 4)
        for z in range(depth):
            e = index.entry(flat)
            assert (e.volume_id, e.slice_idx, e.partition) == (name, z, expected[z])
            assert index.flat_index(name, z) == flat
            flat += 1
    parts_b = _expected_partitions(5, 4)
    assert index.slices_of(1, 2).tolist() == [10 + z for z in range(5) if parts_b[z] == 2]
    with pytest.raises(ValueError, match="repeated: a"):
        SliceIndex([("a", 5), ("a", 6)], S=2)


def _index() -> SliceIndex:
    depths = {f"v{i}": d for i, d in enumerate([10, 5, 8, 20, 4, 13, 7, 9, 6, 11, 30])}
    return SliceIndex(depths, S=4)


def test_batches_one_slice_per_volume_and_partition() -> None:
    index = _index()
    sampler = PartitionBatchSampler(index, volumes_per_batch=3, S=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 11 // 3
    seen_volumes: list[int] = []
    for batch in batches:
        assert len(batch) == 3 * 4
        vols, parts = index.batch_ids(batch)
        for k in range(3):
            # volume-major layout: positions k*S..k*S+S-1 are partitions 0..S-1 of one volume
            assert len(set(vols[k * 4 : (k + 1) * 4].tolist())) == 1
            assert parts[k * 4 : (k + 1) * 4].tolist() == [0, 1, 2, 3]
        pairs = {(int(v), int(p)) for v, p in zip(vols, parts, strict=True)}
        assert len(pairs) == 12 and len(set(vols.tolist())) == 3
        for i in batch:  # the stored partition is the formula's
            e = index.entry(i)
            assert (
                e.partition
                == _expected_partitions(int(index.depths[index.volume[i]]), 4)[e.slice_idx]
            )
        seen_volumes += sorted(set(vols.tolist()))
    assert len(seen_volumes) == len(set(seen_volumes))  # each volume at most once per epoch


def test_sampler_deterministic_per_seed_and_epoch() -> None:
    index = _index()

    def draw(seed: int, epoch: int) -> list[list[int]]:
        s = PartitionBatchSampler(index, volumes_per_batch=2, S=4, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert draw(3, 0) == draw(3, 0)
    assert draw(3, 1) == draw(3, 1)
    assert draw(3, 0) != draw(3, 1)
    assert draw(3, 0) != draw(4, 0)


def test_sampler_covers_every_slice_of_a_partition() -> None:
    # volume with a 6-slice partition: over many epochs every slice in it is drawn
    index = SliceIndex({"a": 24, "b": 4}, S=4)
    s = PartitionBatchSampler(index, volumes_per_batch=2, S=4, seed=0)
    drawn: set[int] = set()
    for epoch in range(200):
        s.set_epoch(epoch)
        for batch in s:
            drawn |= {i for i in batch if index.volume[i] == 0 and index.partition[i] == 1}
    assert drawn == set(index.slices_of(0, 1).tolist()) == set(range(6, 12))


def test_ddp_shards_disjoint_and_equal() -> None:
    index = _index()
    shards = []
    for rank in range(3):
        s = PartitionBatchSampler(
            index, volumes_per_batch=1, S=4, seed=7, num_replicas=3, rank=rank
        )
        s.set_epoch(2)
        shards.append([tuple(b) for b in s])
    # 11 volumes -> 11 batches -> 3 per rank (the remainder dropped on every rank)
    assert [len(sh) for sh in shards] == [3, 3, 3]
    volumes = [index.volume[list(b)][0] for sh in shards for b in sh]
    assert len(set(volumes)) == 9
    full = PartitionBatchSampler(index, volumes_per_batch=1, S=4, seed=7)
    full.set_epoch(2)
    all_batches = full.epoch_batches()
    for rank, sh in enumerate(shards):
        assert sh == [tuple(b) for b in all_batches[rank::3][:3]]


def test_batches_per_epoch_and_argument_errors() -> None:
    index = _index()
    s = PartitionBatchSampler(index, volumes_per_batch=4, S=4, seed=0, batches_per_epoch=25)
    batches = list(s)
    assert len(batches) == 25
    for batch in batches:
        vols, parts = index.batch_ids(batch)
        assert len(set(vols.tolist())) == 4
        assert parts.tolist() == [0, 1, 2, 3] * 4
    with pytest.raises(ValueError, match="differs from the index's S=4"):
        PartitionBatchSampler(index, volumes_per_batch=2, S=3, seed=0)
    with pytest.raises(ValueError, match="only 11 volumes"):
        PartitionBatchSampler(index, volumes_per_batch=12, S=4, seed=0)
    with pytest.raises(ValueError, match="no batches"):
        PartitionBatchSampler(index, volumes_per_batch=6, S=4, seed=0, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PartitionBatchSampler(index, volumes_per_batch=2, S=4, seed=0, num_replicas=2, rank=2)
