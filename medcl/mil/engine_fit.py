"""Training a bag aggregator on the shared engine: torchrun / DDP, step checkpoints, exact resume.

``medcl mil train`` trains each fold's ``mean`` / ``max`` / ``abmil`` / ``transmil`` model with
:class:`medcl.engine.trainer.Trainer` in stages of one epoch (``max_steps`` = the end of the
epoch), and validates between stages for early stopping:

* **data**: every process holds the bags; a ``DistributedSampler`` (also in one process, with one
  replica) gives each process its shard in an order that depends only on the seed and the epoch;
  batches are bag *indices*, padded inside the step, so a resumed epoch skips its finished
  batches without reading them;
* **checkpoints**: the Trainer writes ``<fold>/train/ckpt_step*.pt`` every ``ckpt_every`` steps
  and at the end of each epoch (model, optimizer, step, epoch, every rank's generators), rank 0
  only; the early-stopping state (history, best epoch, patience counter) is written by rank 0 to
  ``<fold>/train/progress.json`` after each validation, the best weights to ``best.pt``;
* **resume**: a killed run restarts from the last step checkpoint and continues with the same
  batches and random numbers, so it ends with the weights and history of an uninterrupted run
  (tested). Each process validates the whole validation set with the same weights, so every
  process takes the same early-stopping decision without communication.

The loss is the class-weighted bag cross-entropy of :func:`medcl.mil.train.fit_mil` (whose
in-memory loop stays the fast path of the library and the benchmarks).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from medcl.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from medcl.engine.distributed import DistInfo, barrier
from medcl.engine.trainer import Metrics, TrainConfig, Trainer
from medcl.mil.aggregators import create_aggregator
from medcl.mil.data import Bag, collate_bags
from medcl.mil.train import FitResult, MILTrainConfig, _improved, _validate, class_weights

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
BEST = "best.pt"


class _BagIndices(torch.utils.data.Dataset[int]):
    """A dataset of bag indices (the bags themselves stay in the step function)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_indices(items: list[int]) -> Tensor:
    return torch.tensor(items, dtype=torch.int64)


class _BagStep:
    """``step_fn``: pad the batch's bags, class-weighted cross-entropy of the bag logits."""

    def __init__(self, bags: Sequence[Bag], weights: Tensor) -> None:
        self.bags = bags
        self.weights = weights

    def __call__(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, Metrics]:
        device = self.weights.device
        padded = collate_bags([self.bags[int(i)] for i in batch.tolist()]).to(device)
        out = model(padded.features, padded.mask)
        return F.cross_entropy(out.logits, padded.labels, weight=self.weights), {}


def bag_loader(n_bags: int, batch_size: int, seed: int, info: DistInfo) -> DataLoader[int]:
    """Each process's shard of bag indices, reshuffled by ``set_epoch`` (seed + epoch)."""
    sampler: DistributedSampler[int] = DistributedSampler(
        _BagIndices(n_bags),
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=seed,
        drop_last=info.world_size > 1,  # every process must take the same number of steps
    )
    return DataLoader(
        _BagIndices(n_bags), batch_size=batch_size, sampler=sampler, collate_fn=_collate_indices
    )


def _device_kind(info: DistInfo) -> Literal["cpu", "cuda"]:
    return "cuda" if info.device.type == "cuda" else "cpu"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tmp.replace(path)


def _read_progress(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"history": [], "best_value": -math.inf, "best_epoch": 0, "stale": 0, "done": False}
    progress: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    progress["best_value"] = float(progress["best_value"])
    return progress


def fit_mil_engine(
    train: Sequence[Bag],
    val: Sequence[Bag] | None,
    cfg: MILTrainConfig,
    *,
    n_classes: int,
    out_dir: Path,
    info: DistInfo,
) -> FitResult:
    """Train ``cfg.aggregator`` (not ``ins``) on the engine; resumes from ``out_dir``.

    Every process calls it (same bags, same config); only rank 0 writes.
    """
    if not train:
        raise ValueError("fit_mil_engine needs at least one training bag")
    world = info.world_size
    if world > 1 and len(train) < world:
        raise ValueError(f"{len(train)} training bags cannot be shared by {world} processes")
    in_dim = int(train[0].features.shape[1])
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = create_aggregator(cfg.aggregator, in_dim, n_classes, **cfg.aggregator_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = (
        class_weights([b.label for b in train], n_classes)
        if cfg.class_weighting
        else torch.ones(n_classes)
    ).to(info.device)
    loader = bag_loader(len(train), cfg.batch_size, cfg.seed, info)
    per_epoch = len(loader)
    train_cfg = TrainConfig(
        max_steps=per_epoch, log_every=per_epoch, ckpt_every=cfg.ckpt_every, keep_last=2,
        precision="fp32", seed=cfg.seed, device=_device_kind(info), progress=False,
        tensorboard=False,
    )  # fmt: skip
    trainer = Trainer(
        model, opt, _BagStep(train, weights), loader, train_cfg, out_dir,
        dist_info=info, config=cfg.model_dump(mode="json"), arch=cfg.aggregator,
    )  # fmt: skip
    progress_path, best_path = out_dir / PROGRESS, out_dir / BEST
    progress = _read_progress(progress_path)
    epoch = len(progress["history"])
    while epoch < cfg.epochs and not progress["done"]:
        trainer.max_steps = (epoch + 1) * per_epoch
        summary = trainer.fit()
        # the loss of the epoch's last step (mean over processes)
        row: dict[str, float] = {"epoch": float(epoch), "last_step_loss": summary.last_loss}
        if val:
            row.update(_validate(model, val, weights, cfg.batch_size))
        progress["history"].append(row)
        if val:
            better, value = _improved(row, progress["best_value"], cfg.monitor)
            if better:
                progress.update(best_value=value, best_epoch=epoch, stale=0)
                if info.is_main:
                    save_checkpoint(best_path, model=model, step=summary.step, epoch=epoch)
            else:
                progress["stale"] += 1
                if cfg.patience and progress["stale"] >= cfg.patience:
                    log.info("early stop at epoch %d (best %d)", epoch, progress["best_epoch"])
                    progress["done"] = True
        else:
            progress["best_epoch"] = epoch
        if info.is_main:
            _write_json(progress_path, progress)
        barrier()
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        epoch += 1
    last = latest_checkpoint(out_dir)
    if val and best_path.is_file():
        load_checkpoint(best_path, model=model)
    elif last is not None:  # e.g. a run killed after its last epoch, before model.pt
        load_checkpoint(last, model=model)
    model.eval()
    return FitResult(model, list(progress["history"]), int(progress["best_epoch"]), [])
