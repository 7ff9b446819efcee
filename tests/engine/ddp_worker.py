"""Trains a tiny model with the Trainer under torchrun (or alone) for test_distributed.py.

Run as ``torchrun --nproc_per_node=2 ddp_worker.py OUT`` (4 samples per rank) or
``python ddp_worker.py OUT`` (8 samples): the global batch is 8 either way, drawn by a
DistributedSampler so the union of the ranks' batches equals the one-process batch. Every rank
also checks ``gather_with_grad`` and writes ``rank{R}.json``; rank 0 writes ``weights.pt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from medcl.engine import TrainConfig, Trainer, cleanup, gather_with_grad, init_distributed

GLOBAL_BATCH, N_SAMPLES = 8, 32


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    rank, world = info.rank, info.world_size

    # gather_with_grad: values in rank order, gradient of the sum of every rank's loss.
    z = (torch.arange(6, dtype=torch.float64).reshape(2, 3) + 10 * rank).requires_grad_()
    gathered = gather_with_grad(z)
    ((gathered**2).sum() * (rank + 1)).backward()
    assert z.grad is not None
    report: dict[str, Any] = {
        "rank": rank,
        "world_size": world,
        "gathered": gathered.detach().tolist(),
        "grad": z.grad.tolist(),
    }

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(N_SAMPLES, 4, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(4, 2, generator=gen, dtype=torch.float64)
    sampler: DistributedSampler[Any] = DistributedSampler(
        TensorDataset(x, y), num_replicas=world, rank=rank, shuffle=True, seed=3
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // world, sampler=sampler)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)

    def step_fn(net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xb, yb = batch
        pred = net(xb)
        return nn.functional.mse_loss(pred, yb), {"abs_err": (pred - yb).abs().mean()}

    cfg = TrainConfig(
        max_steps=args.steps,
        log_every=1,
        ckpt_every=3,
        precision="fp32",
        device="cpu",
        progress=False,
    )
    summary = Trainer(model, optimizer, step_fn, loader, cfg, args.out_dir, dist_info=info).fit()
    report["step"], report["epoch"] = summary.step, summary.epoch
    (args.out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    if info.is_main:
        torch.save(model.state_dict(), args.out_dir / "weights.pt")
    cleanup()


if __name__ == "__main__":
    main()
