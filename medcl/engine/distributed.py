"""torchrun helpers that do nothing outside a distributed run.

:func:`init_distributed` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group (NCCL on CUDA, Gloo
on CPU). Started as a plain ``python`` process it creates no group and reports world size 1; every
other helper is then the identity, so library code calls them unconditionally.

The library never picks the device by itself: it comes from the ``device`` argument
(``"auto" | "cpu" | "cuda"``, usually a config value) and the process's ``LOCAL_RANK``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medcl.errors import ConfigError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """Turn a config's ``"auto" | "cpu" | "cuda"`` (or ``"cuda:1"``) into a device.

    ``"auto"`` is CUDA when available, else CPU. A CUDA device without an index becomes
    ``cuda:<local_rank>`` so that each torchrun process gets its own GPU.
    """
    kind = device.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ConfigError(
            "device", "device", f"'{device}' is not one of {', '.join(DEVICE_CHOICES)}"
        )
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device", "device", "'cuda' was asked for but no CUDA device is visible")
    if ":" in device:
        return torch.device(device)
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}", None, f"'{value}' is not an integer"
        ) from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if there is one; otherwise describe a one-process run.

    Args:
        device: ``"auto" | "cpu" | "cuda"``; the backend follows it (NCCL for CUDA, Gloo for CPU).

    Returns:
        The process's :class:`DistInfo`. Calling it again returns the same description.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    torch_device = resolve_device(device, local_rank)
    if world_size > 1:
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        if not dist.is_initialized():
            backend = "nccl" if torch_device.type == "cuda" else "gloo"
            init_kwargs: dict[str, Any] = {
                "backend": backend,
                "rank": rank,
                "world_size": world_size,
            }
            if torch_device.type == "cuda":
                init_kwargs["device_id"] = torch_device
            dist.init_process_group(**init_kwargs)
            logger.info("joined %s process group: rank %d of %d", backend, rank, world_size)
    return DistInfo(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=torch_device,
        is_main=rank == 0,
    )


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """Rank of this process, 0 outside a distributed run."""
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    """Number of processes, 1 outside a distributed run."""
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a one-process run)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process; a no-op in one process."""
    if _active():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (a new, detached tensor); ``tensor`` itself in one process.

    Meant for logging: the result carries no gradient.
    """
    if not _active():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order; ``[obj]`` in one process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed gradients.

    Each process computes its loss on the gathered tensor; the gradient of the *sum* of all the
    processes' losses with respect to the local input is the sum, over processes, of the gradient
    each one sees for this rank's slice, hence the all_reduce in backward.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z`` from every process along dim 0, keeping the gradient to the local ``z``.

    For opt-in cross-process negatives (as lightly's ``gather_distributed``): a loss over the
    gathered batch back-propagates into this process's ``z`` the gradient of the sum of every
    process's loss, so with DDP's gradient averaging the update equals one process training on
    the global batch with the mean of the per-process losses.

    Shape:
        z: ``(B, ...)``, the same ``B`` on every process. Returns ``(world_size * B, ...)`` in
        rank order; ``z`` itself in one process.
    """
    if not _active():
        return z
    return torch.cat(_GatherWithGrad.apply(z), dim=0)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP (or DataParallel) wrapper, or ``model`` itself."""
    while isinstance(model, DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def wrap_ddp(model: nn.Module, info: DistInfo, **ddp_kwargs: Any) -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) in DistributedDataParallel when distributed.

    Returns ``model`` unchanged in a one-process run. Extra keyword arguments go to DDP (for
    example ``find_unused_parameters=True``).
    """
    if not info.distributed or not _active():
        return model
    if info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [info.device.index])
        ddp_kwargs.setdefault("output_device", info.device.index)
    return DistributedDataParallel(model, **ddp_kwargs)
