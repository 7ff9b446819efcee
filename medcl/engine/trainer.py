"""A compact, resumable training loop shared by every pretraining and fine-tuning job.

Not a framework: the job supplies the model, optimizer, data loader and a ``step_fn(model, batch)
-> (loss, metrics)``; :class:`Trainer` adds the plumbing every job needs, in the spirit of the
dino / moco-v3 scripts: device placement and DDP, mixed precision, gradient accumulation and
clipping, a per-step scheduler, logs (``metrics.csv``, TensorBoard if installed), a tqdm bar on
rank 0, checkpoints every ``ckpt_every`` steps and at the end, and resumption from the latest
checkpoint in ``out_dir``.

A checkpoint resumes only a run with the same settings: the stored config is compared with this
run's (everything but how long, how often and where it runs, see
:data:`~medcl.engine.checkpoint.RESUMABLE_KEYS`), and a different loss, data or precision is
refused with both values named rather than silently continued.

Resumption is exact: besides model/optimizer/scheduler/scaler, a checkpoint stores the epoch, how
many batches of it were consumed, the generator states at the start of that epoch (so the
sampler draws the same order and the workers the same seeds) and the current generator states. A
killed run therefore continues with the same batches and random numbers it would have used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medcl.config import StrictModel
from medcl.engine.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_for_rank,
    save_checkpoint,
)
from medcl.engine.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    barrier,
    init_distributed,
    wrap_ddp,
)
from medcl.engine.loggers import MetricLoggers
from medcl.engine.precision import MixedPrecision
from medcl.engine.seed import get_rng_state, seed_everything, set_rng_state
from medcl.errors import ConfigError, MedclError

logger = logging.getLogger(__name__)

Metrics = Mapping[str, float | torch.Tensor]
StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Metrics]]


class TrainConfig(StrictModel):
    """Settings of the generic loop (a section of every training job's config)."""

    max_steps: int | None = Field(
        default=None,
        gt=0,
        description="optimizer steps to train for (jobs with stages set it per stage)",
    )
    log_every: int = Field(default=10, gt=0, description="log every N steps (and the last)")
    ckpt_every: int = Field(
        default=1000, ge=0, description="checkpoint every N steps; 0: only the last"
    )
    keep_last: int = Field(default=3, ge=0, description="checkpoints kept; 0 keeps all")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    grad_clip: float | None = Field(
        default=None, gt=0, description="max gradient norm; None: no clip"
    )
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainSummary:
    """What :meth:`Trainer.fit` did."""

    step: int
    epoch: int
    last_loss: float
    resumed_from: int | None
    checkpoint: Path | None


def supervised_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> StepFn:
    """A ``step_fn`` for ``(inputs, targets)`` batches: ``loss_fn(model(inputs), targets)``."""

    def step_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Metrics]:
        inputs, targets = batch
        return loss_fn(model(inputs), targets), {}

    return step_fn


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in nested tuples / lists / dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor (0 if none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, Mapping | tuple | list):
        for value in values:
            size = batch_size(value)
            if size:
                return size
    return 0


def set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader, its samplers and dataset where they have one."""
    seen: set[int] = set()
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (
        loader,
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
        getattr(loader, "dataset", None),
    ):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


class Trainer:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps, resuming from ``out_dir``.

    Args:
        model: the network (moved to the device and wrapped in DDP when distributed).
        optimizer: built on ``model``'s parameters.
        step_fn: ``step_fn(model, batch) -> (loss, metrics)``; ``model`` is the (possibly DDP)
            wrapped network, ``batch`` is already on the device, ``loss`` a scalar tensor,
            ``metrics`` scalars to log (averaged over micro-batches and processes).
        train_loader: an iterable of batches, re-iterated once per epoch; its sampler's
            ``set_epoch`` is called (DistributedSampler). With several processes it must give
            each process its own shard.
        cfg: the loop's settings.
        out_dir: checkpoints and ``metrics.csv`` go here (written by rank 0 only).
        scheduler: stepped after every optimizer step.
        dist_info: from :func:`~medcl.engine.distributed.init_distributed`; made from
            ``cfg.device`` when not given. Its device wins over ``cfg.device``.
        config: the job's resolved config, stored in every checkpoint beside ``cfg``.
        arch: architecture name stored in checkpoints.
        on_step: ``on_step(step, last_loss)`` after every optimizer step (and its checkpoint),
            with the last logged loss; returning True ends training there (early stopping).
            Under DDP every rank calls it and all must return the same answer (e.g. a validation
            score of the synced model).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_fn: StepFn,
        train_loader: Iterable[Any],
        cfg: TrainConfig,
        out_dir: str | os.PathLike[str],
        scheduler: Any | None = None,
        dist_info: DistInfo | None = None,
        config: Mapping[str, Any] | None = None,
        arch: str | None = None,
        on_step: Callable[[int, float], bool] | None = None,
    ) -> None:
        if cfg.max_steps is None:
            raise ConfigError("train", "max_steps", "required: how many optimizer steps to train")
        self.max_steps: int = cfg.max_steps
        self.model = model
        self.optimizer = optimizer
        self.step_fn = step_fn
        self.loader = train_loader
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.scheduler = scheduler
        self.info = dist_info if dist_info is not None else init_distributed(cfg.device)
        self.device = self.info.device
        self.amp = MixedPrecision(cfg.precision, self.device)
        self.config = {"train": cfg.model_dump(), **dict(config or {})}
        self.arch = arch
        self.on_step = on_step
        self.step = 0
        self.epoch = 0
        self._batch_in_epoch = 0
        self._epoch_rng: dict[str, Any] = {}
        self._iter: Iterator[Any] | None = None
        self._last_ckpt: Path | None = None
        self._last_loss = math.nan
        self._lr = math.nan

    # -- data -------------------------------------------------------------------------------
    def _start_epoch(self, skip: int = 0, epoch_rng: dict[str, Any] | None = None) -> None:
        if epoch_rng is not None:
            set_rng_state(epoch_rng)
        self._epoch_rng = get_rng_state()
        set_epoch(self.loader, self.epoch)
        self._iter = iter(self.loader)
        self._batch_in_epoch = 0
        for _ in range(skip):
            if next(self._iter, None) is None:
                break
            self._batch_in_epoch += 1

    def _next_batch(self) -> Any:
        assert self._iter is not None
        batch = next(self._iter, None)
        if batch is None:
            self.epoch += 1
            self._start_epoch()
            batch = next(self._iter, None)
            if batch is None:
                raise MedclError("the training data loader yields no batches")
        self._batch_in_epoch += 1
        return batch

    # -- checkpoints ------------------------------------------------------------------------
    def _resume(self) -> int | None:
        path = latest_checkpoint(self.out_dir) if self.cfg.resume else None
        if path is None:
            if not self.cfg.resume and latest_checkpoint(self.out_dir) is not None:
                logger.warning("resume is off: starting over in %s", self.out_dir)
            self._start_epoch()
            return None
        payload = load_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.amp,
            map_location="cpu",
            expected_config=self.config,  # a changed loss or data must not resume this run
        )
        state = payload["extra"].get("trainer", {})
        self.step, self.epoch = int(payload["step"]), int(payload["epoch"])
        self._last_loss = float(state.get("last_loss", math.nan))
        rank = self.info.rank
        epoch_rng = rng_for_rank(state, rank, "epoch_rng") if "epoch_rng" in state else None
        # Replay the epoch's start so the sampler and workers draw what they drew before, skip the
        # batches already trained on, then continue the generators from where they were saved.
        self._start_epoch(int(state.get("batch_in_epoch", 0)), epoch_rng)
        set_rng_state(rng_for_rank(payload, rank))
        self._last_ckpt = path
        logger.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
        return self.step

    def _save(self, last_loss: float) -> None:
        rng_states = all_gather_object(get_rng_state())
        epoch_rngs = all_gather_object(self._epoch_rng)
        if self.info.is_main:
            saved = save_checkpoint(
                self.out_dir / checkpoint_name(self.step),
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.amp,
                step=self.step,
                epoch=self.epoch,
                config=self.config,
                arch=self.arch,
                rng_states=rng_states,
                extra={
                    "trainer": {
                        "batch_in_epoch": self._batch_in_epoch,
                        "epoch_rng": epoch_rngs,
                        "last_loss": last_loss,
                        "world_size": self.info.world_size,
                    }
                },
            )
            prune_checkpoints(self.out_dir, self.cfg.keep_last)
            self._last_ckpt = saved.path
        barrier()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainSummary:
        """Train until ``self.max_steps``, resuming from the latest checkpoint in ``out_dir``."""
        cfg, info = self.cfg, self.info
        seed_everything(cfg.seed + info.rank, cfg.deterministic)
        if self.device.type == "cpu":
            # weights that trained a while hold denormal floats, which make x86 CPUs 10-20x
            # slower (measured: 4 vs 89 images/s fine-tuning a pretrained UNet); flush them.
            torch.set_flush_denormal(True)
        self.model.to(self.device)
        self._last_loss = math.nan
        resumed_from = self._resume()
        net = wrap_ddp(self.model, info)
        if self.step >= self.max_steps:
            logger.info("already trained for %d steps; nothing to do", self.step)
            return TrainSummary(
                self.step, self.epoch, self._last_loss, resumed_from, self._last_ckpt
            )

        sinks = MetricLoggers(self.out_dir, self.step, cfg.tensorboard) if info.is_main else None
        bar = tqdm(
            total=self.max_steps,
            initial=self.step,
            disable=not (info.is_main and cfg.progress),
            desc="train",
            dynamic_ncols=True,
        )
        net.train()
        samples, tic = 0, time.perf_counter()
        try:
            while self.step < self.max_steps:
                loss_sum, metric_sums, samples_step = self._train_step(net)
                samples += samples_step
                self.step += 1
                done = self.step == self.max_steps
                if self.step % cfg.log_every == 0 or done:
                    row = self._reduce(loss_sum, metric_sums)
                    self._last_loss = row["loss"]
                    if not math.isfinite(self._last_loss):
                        raise MedclError(f"loss is {self._last_loss} at step {self.step}; stopping")
                    elapsed = max(time.perf_counter() - tic, 1e-9)
                    row["images_per_s"] = samples * info.world_size / elapsed
                    samples, tic = 0, time.perf_counter()
                    if sinks is not None:
                        sinks.log({"step": self.step, "epoch": self.epoch, **row})
                    bar.set_postfix(loss=f"{self._last_loss:.4g}")
                bar.update(1)
                saved = False
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or done:
                    self._save(self._last_loss)
                    saved = True
                stop = self.on_step is not None and self.on_step(self.step, self._last_loss)
                if stop and not done:
                    if self.step % cfg.log_every:
                        self._last_loss = self._reduce(loss_sum, metric_sums)["loss"]
                    if not saved:
                        self._save(self._last_loss)
                    logger.info("stopped early at step %d", self.step)
                    break
        finally:
            bar.close()
            if sinks is not None:
                sinks.close()
        return TrainSummary(self.step, self.epoch, self._last_loss, resumed_from, self._last_ckpt)

    def _train_step(self, net: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns summed loss and metrics."""
        accum = self.cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        samples = 0
        for micro in range(accum):
            batch = move_to_device(self._next_batch(), self.device)
            samples += batch_size(batch)
            # Only the last micro-batch all-reduces gradients under DDP.
            context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if isinstance(net, DistributedDataParallel) and micro < accum - 1:
                context = net.no_sync()
            with context:
                with self.amp.autocast():
                    loss, metrics = self.step_fn(net, batch)
                self.amp.backward(loss / accum)
            loss_sum += loss.detach().double()
            for key, value in metrics.items():
                value_t = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach()
                metric_sums[key] = (
                    metric_sums.get(key, torch.zeros((), device=self.device)) + value_t
                )
        self._lr = float(self.optimizer.param_groups[0]["lr"])  # the lr this step used
        self.amp.step(self.optimizer, self.model.parameters(), self.cfg.grad_clip)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_sum, metric_sums, samples

    def _reduce(
        self, loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Average the step's loss and metrics over micro-batches and processes."""
        keys = sorted(metric_sums)
        stacked = torch.stack([loss_sum, *(metric_sums[k] for k in keys)]) / self.cfg.grad_accum
        values = all_reduce_mean(stacked).tolist()
        row: dict[str, Any] = {"loss": values[0], "lr": self._lr}
        row.update(zip(keys, values[1:], strict=True))
        return row
