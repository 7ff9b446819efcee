"""The shuffled training loader every image job uses: DDP-aware, seeded, with workers."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from medcl.engine.distributed import DistInfo
from medcl.engine.seed import worker_init_fn


def shuffled_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    info: DistInfo,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """Full batches in a seeded random order; each process gets its own shard under DDP.

    The sampler's ``set_epoch`` (called by the Trainer) reshuffles every epoch; the shuffled order
    depends only on ``seed`` and the epoch, so a resumed run draws the same batches.
    """
    if not isinstance(dataset, Sized):
        raise TypeError("shuffled_loader needs a dataset with a length")
    sampler: Any
    if info.world_size > 1:
        sampler = DistributedSampler(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        worker_init_fn=worker_init_fn if num_workers else None,
        persistent_workers=num_workers > 0,
    )
