"""Partition sampling for the global contrastive loss across volumes.

Chaitanya et al., "Contrastive learning of global and local features for medical image
segmentation with limited annotations", NeurIPS 2020: each volume is split along its slice axis
into ``S`` partitions; slices from the same partition of *different* volumes show roughly the same
anatomy, so the losses G^D- / G^D treat them as (excluded) negatives / positives. A batch holds
``m`` volumes and one random slice of every partition of each: ``m * S`` images.

Partitions are defined by **relative** position along the slice axis: partition ``p`` of a volume
of depth ``D`` holds the slices ``z`` with ``p * D / S <= z < (p + 1) * D / S`` (equal-width bins
over the slice index, real-valued edges), that is ``p = floor(z * S / D)``. Because only the
relative position counts, volumes of different depths *and* different slice spacings can be mixed
without resampling; what must agree is the anatomical extent and the direction of the slice axis
(reorient to a common orientation, e.g. RAS, and crop to the organ first).

Everything here is pure numpy except :class:`PartitionBatchSampler`, a ``torch`` batch sampler
that yields lists of flat indices into a :class:`SliceIndex`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from medcl.errors import MedclError

logger = logging.getLogger(__name__)


class TooFewSlicesError(MedclError, ValueError):
    """A volume has fewer slices than the number of partitions asked for."""


def partition_of_slices(
    depth: int,
    S: int,  # noqa: N803  (the paper's notation)
    *,
    volume_id: str | None = None,
) -> np.ndarray:
    """Partition index of every slice of a volume with ``depth`` slices.

    Args:
        depth: number of slices along the slice axis.
        S: number of partitions (equal-width bins over the slice index).
        volume_id: name used in the error message when ``S > depth``.

    Returns:
        ``(depth,)`` int64 array; entry ``z`` is ``floor(z * S / depth)``, so partition ``p``
        holds the slices with ``p * depth <= z * S < (p + 1) * depth``. Every partition is
        non-empty when ``S <= depth``.

    Raises:
        TooFewSlicesError: ``S > depth`` (some partition would be empty).
        ValueError: ``depth`` or ``S`` is not positive.

    Example:
        >>> partition_of_slices(10, 4).tolist()
        [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    """
    if S < 1:
        raise ValueError(f"S must be a positive number of partitions, got {S}")
    if depth < 1:
        raise ValueError(f"depth must be a positive number of slices, got {depth}")
    if depth < S:
        name = f"volume '{volume_id}'" if volume_id is not None else "the volume"
        raise TooFewSlicesError(f"S={S} partitions but {name} has only {depth} slices")
    return (np.arange(depth, dtype=np.int64) * S) // depth


@dataclass(frozen=True)
class SliceEntry:
    """One slice of a :class:`SliceIndex`: volume name, slice position, partition."""

    volume_id: str
    slice_idx: int
    partition: int


class SliceIndex:
    """The slices of a collection of volumes of (possibly) different depths, with partitions.

    Flat index ``i`` enumerates the slices volume by volume, in the order the volumes are given,
    slice 0 first; a dataset that serves slices must use the same order (``entry(i)`` says which
    slice it is).

    Args:
        depths: ``{volume_id: depth}`` or a sequence of ``(volume_id, depth)`` pairs.
        S: number of partitions per volume.

    Raises:
        TooFewSlicesError: a volume has fewer than ``S`` slices (the message names it).
        ValueError: no volumes, or a volume id given twice.
    """

    def __init__(
        self,
        depths: Mapping[str, int] | Sequence[tuple[str, int]],
        S: int = 4,  # noqa: N803
    ) -> None:
        pairs = list(depths.items()) if isinstance(depths, Mapping) else list(depths)
        if not pairs:
            raise ValueError("SliceIndex needs at least one volume")
        ids = [str(v) for v, _ in pairs]
        if len(set(ids)) != len(ids):
            dup = sorted({v for v in ids if ids.count(v) > 1})
            raise ValueError(f"volume ids must be unique; repeated: {', '.join(dup)}")
        self.S = S
        self.volume_ids: list[str] = ids
        self.depths = np.array([int(d) for _, d in pairs], dtype=np.int64)
        parts = [
            partition_of_slices(int(d), S, volume_id=v)
            for v, d in zip(ids, self.depths, strict=True)
        ]
        self.volume = np.repeat(np.arange(len(ids), dtype=np.int64), self.depths)
        self.slice_idx = np.concatenate([np.arange(d, dtype=np.int64) for d in self.depths])
        self.partition = np.concatenate(parts)
        self.offsets = np.concatenate([[0], np.cumsum(self.depths)]).astype(np.int64)
        # starts[v, p]: first flat index of partition p of volume v; counts[v, p]: its size.
        self._starts = np.empty((len(ids), S), dtype=np.int64)
        self._counts = np.empty((len(ids), S), dtype=np.int64)
        for v, part in enumerate(parts):
            counts = np.bincount(part, minlength=S)
            self._counts[v] = counts
            self._starts[v] = self.offsets[v] + np.concatenate([[0], np.cumsum(counts)[:-1]])

    @property
    def num_volumes(self) -> int:
        return len(self.volume_ids)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def entry(self, i: int) -> SliceEntry:
        """The volume, slice and partition at flat index ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices")
        return SliceEntry(
            self.volume_ids[int(self.volume[i])], int(self.slice_idx[i]), int(self.partition[i])
        )

    def flat_index(self, volume_id: str, slice_idx: int) -> int:
        """Flat index of slice ``slice_idx`` of volume ``volume_id``."""
        v = self.volume_ids.index(volume_id)
        if not 0 <= slice_idx < self.depths[v]:
            raise IndexError(f"volume '{volume_id}' has no slice {slice_idx}")
        return int(self.offsets[v] + slice_idx)

    def slices_of(self, volume: int, partition: int) -> np.ndarray:
        """Flat indices of the slices in ``partition`` of volume number ``volume``."""
        start = self._starts[volume, partition]
        return np.arange(start, start + self._counts[volume, partition], dtype=np.int64)

    def batch_ids(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(volume numbers, partitions)`` of a batch of flat indices, each ``(len(indices),)``.

        These are the labels the partition losses need: same partition of different volumes.
        """
        idx = np.asarray(indices, dtype=np.int64)
        return self.volume[idx], self.partition[idx]


class PartitionBatchSampler(Sampler[list[int]]):
    """Batches of ``volumes_per_batch * S`` slices: one random slice per partition per volume.

    Each batch picks ``volumes_per_batch`` distinct volumes and, for each picked volume and each
    partition ``s = 0..S-1``, one slice drawn uniformly from that partition. Batch layout is
    volume-major: position ``k * S + s`` holds partition ``s`` of the ``k``-th picked volume.

    An epoch is one pass over a random permutation of the volumes, cut into groups of
    ``volumes_per_batch`` (the last, incomplete group dropped), unless ``batches_per_epoch`` is
    given: then every batch draws its volumes afresh (distinct within the batch).

    Deterministic: the draws depend only on ``(seed, epoch)``; call :meth:`set_epoch` each epoch.
    Under DDP every rank draws the same epoch and keeps batches ``rank, rank + num_replicas, ...``
    truncated to the same count on every rank, so the ranks' shares are disjoint and equal.

    Args:
        index: the slices and their partitions.
        volumes_per_batch: volumes per batch (the paper's ``m``).
        S: partitions per volume; must equal ``index.S``.
        seed: base random seed.
        batches_per_epoch: total batches per epoch (before sharding); None: one pass over volumes.
        num_replicas: number of DDP ranks (1 outside DDP).
        rank: this rank, ``0 <= rank < num_replicas``.
    """

    def __init__(
        self,
        index: SliceIndex,
        *,
        volumes_per_batch: int,
        S: int,  # noqa: N803
        seed: int,
        batches_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if S != index.S:
            raise ValueError(f"sampler S={S} differs from the index's S={index.S}")
        if volumes_per_batch < 1:
            raise ValueError(f"volumes_per_batch must be >= 1, got {volumes_per_batch}")
        if volumes_per_batch > index.num_volumes:
            raise ValueError(
                f"volumes_per_batch={volumes_per_batch} but only {index.num_volumes} volumes"
            )
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, {num_replicas=}")
        self.index = index
        self.volumes_per_batch = volumes_per_batch
        self.S = S
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"no batches: {self._total_batches()} batch(es) per epoch for "
                f"{num_replicas} ranks; use fewer volumes_per_batch or set batches_per_epoch"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws :meth:`__iter__` yields."""
        self.epoch = epoch

    def _total_batches(self) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return self.index.num_volumes // self.volumes_per_batch

    def __len__(self) -> int:
        return self._total_batches() // self.num_replicas

    def epoch_batches(self) -> list[list[int]]:
        """Every batch of the current epoch, all ranks together (before sharding)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_vol, m = self.index.num_volumes, self.volumes_per_batch
        total = self._total_batches()
        if self.batches_per_epoch is None:
            order = rng.permutation(n_vol)[: total * m].reshape(total, m)
        else:
            order = np.stack([rng.choice(n_vol, size=m, replace=False) for _ in range(total)])
        counts = self.index._counts[order]  # (total, m, S)
        starts = self.index._starts[order]
        picks = starts + (rng.random(counts.shape) * counts).astype(np.int64)
        return [row.reshape(-1).tolist() for row in picks]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        mine = batches[self.rank :: self.num_replicas][: len(self)]
        logger.debug("epoch %d rank %d: %d batches", self.epoch, self.rank, len(mine))
        return iter(mine)
