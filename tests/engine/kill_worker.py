"""A tiny linear-regression job on the Trainer, shared by test_trainer.py (imported) and run as a
subprocess that the test kills with SIGKILL part-way (``--hang-after N`` sleeps in step N + 1)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medcl.engine import TrainConfig, Trainer, TrainSummary
from medcl.engine.distributed import DistInfo

N_SAMPLES, N_FEATURES, BATCH = 64, 3, 8


def cpu_info() -> DistInfo:
    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)


def make_data() -> TensorDataset:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64)
    y = x @ w + 0.3 + 0.05 * torch.randn(N_SAMPLES, 1, generator=gen, dtype=torch.float64)
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # Dropout makes the result depend on the torch generator, so resumption must restore it.
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Dropout(0.1), nn.Linear(16, 1)).double()


def run(
    out_dir: Path,
    max_steps: int = 20,
    ckpt_every: int = 5,
    hang_after: int | None = None,
    marker: Path | None = None,
    **cfg_kwargs: Any,
) -> tuple[nn.Module, TrainSummary]:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    # shuffle=True draws the order from torch's global generator each epoch: resumption must
    # replay the epoch's generator state to get the same order.
    loader = DataLoader(make_data(), batch_size=BATCH, shuffle=True)
    calls = 0

    def step_fn(net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nonlocal calls
        calls += 1
        if hang_after is not None and calls > hang_after:
            if marker is not None:
                marker.write_text(str(calls - 1))
            time.sleep(120)  # the test kills us here
        x, y = batch
        pred = net(x)
        return nn.functional.mse_loss(pred, y), {"mae": (pred - y).abs().mean()}

    cfg = TrainConfig(
        max_steps=max_steps,
        log_every=cfg_kwargs.pop("log_every", 1),
        ckpt_every=ckpt_every,
        keep_last=cfg_kwargs.pop("keep_last", 0),
        precision=cfg_kwargs.pop("precision", "fp32"),
        device="cpu",
        seed=7,
        progress=False,
        **cfg_kwargs,
    )
    trainer = Trainer(
        model, optimizer, step_fn, loader, cfg, out_dir, scheduler=scheduler, dist_info=cpu_info()
    )
    return model, trainer.fit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--hang-after", type=int, default=None)
    parser.add_argument("--marker", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run(args.out_dir, args.max_steps, hang_after=args.hang_after, marker=args.marker)


if __name__ == "__main__":
    main()
