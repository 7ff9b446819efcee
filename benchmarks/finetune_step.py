"""Benchmark: a fine-tuning step in channels-last layout against the default (contiguous) layout.

Usage::

    python benchmarks/finetune_step.py                       # ACDC slices when MEDCL_DATA is set
    python benchmarks/finetune_step.py --rounds 7 --steps 30 --size 80 --batch 10

What is timed is the whole training step of ``medcl finetune seg`` as the ACDC protocol runs it
(``configs/eval/acdc_few_label.yaml``): the augmented batch drawn from ``LabelledSliceDataset``
(crop-and-resize, flip, affine, elastic, intensity), the UNet forward, Dice + cross entropy,
backward and the AdamW update, on one thread (the protocol runs two such jobs on two cores).
The two layouts alternate round by round (``--rounds``), from the same initial weights and the
same batches, so a noisy machine affects both alike; by default each measurement is a fresh
process, so one layout's caches and allocations cannot affect the other (``--in-process`` runs
both in this one). The table gives the median
and the range of ms per step, and the ratio channels-last / contiguous per round.

Without ACDC (``MEDCL_DATA`` unset or without ``volumes/acdc``) it uses synthetic volumes of the
same size, which time the model the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medcl.pretrain.finetune import _SegStep
from medcl.pretrain.slices import PreparedVolume

LAYOUTS = ("contiguous", "channels_last")


def _volumes(size: int, count: int) -> tuple[str, list[PreparedVolume]]:
    root = Path(os.environ.get("MEDCL_DATA", "")) / "volumes" / "acdc"
    if os.environ.get("MEDCL_DATA") and root.is_dir():
        from medcl.pretrain.finetune import FinetuneDataConfig
        from medcl.pretrain.volume_data import VolumeSource, load_volumes

        patients = sorted(p for p in root.glob("patient*") if p.is_dir())[:count]
        sources = [
            VolumeSource(
                image=p / f"{p.name}_frame01.nii.gz", label=p / f"{p.name}_frame01_gt.nii.gz"
            )
            for p in patients
        ]
        data = FinetuneDataConfig.model_validate(
            {
                "size": [size, size],
                "inplane": {"mode": "auto", "spacing_mm": 3.3, "short_side": 106},
            }
        )
        return "ACDC", load_volumes(data, sources, class_values=[1, 2, 3], progress=False)
    rng = np.random.default_rng(0)
    vols = []
    for i in range(count):
        image = rng.random((10, size, size), dtype=np.float32)
        label = rng.integers(0, 4, size=(10, size, size)).astype(np.int64)
        shape = (size, size, 10)
        vols.append(PreparedVolume(f"synthetic{i}", image, label, "mr", np.eye(4), shape, ""))
    return "synthetic", vols


def train_step(
    step: _SegStep,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
) -> None:
    """One forward, loss, backward and optimiser update, as the Trainer does it."""
    loss, _ = step(model, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(layout: str, r: int, args: argparse.Namespace) -> tuple[str, float]:
    """Mean ms per step of ``args.steps`` steps in ``layout``, round ``r``'s batches."""
    from torch.utils.data import DataLoader, RandomSampler

    from medcl.models.unet import UNetConfig, create_unet
    from medcl.pretrain.finetune import FinetuneSegConfig, _transform
    from medcl.pretrain.slices import LabelledSliceDataset
    from medcl.transforms import plain_tensors

    torch.set_num_threads(args.threads)
    source, vols = _volumes(args.size, 2)
    cfg = FinetuneSegConfig.model_validate({"data": {"size": [args.size, args.size]}})
    model_cfg = UNetConfig.model_validate(
        {"channels": [8, 16, 32, 64], "in_channels": 1, "out_channels": 4}
    )
    slices = [(v, z) for v in range(len(vols)) for z in range(vols[v].depth)]
    with plain_tensors():
        dataset = LabelledSliceDataset(vols, slices, _transform(cfg, "mr"))
        dataset.set_random_state(r)
        gen = torch.Generator().manual_seed(r)
        sampler = RandomSampler(
            dataset, replacement=True, num_samples=args.batch * (args.steps + 2), generator=gen
        )
        loader = iter(DataLoader(dataset, batch_size=args.batch, sampler=sampler))
        torch.manual_seed(0)
        model = create_unet(model_cfg)
        cl = layout == "channels_last"
        if cl:
            model.to(memory_format=torch.channels_last)
        step = _SegStep(channels_last=cl)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):  # warm-up: allocator, oneDNN primitives
            train_step(step, model, opt, next(loader))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(step, model, opt, next(loader))
    return source, (time.perf_counter() - t0) / args.steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per layout and round")
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--in-process", action="store_true", help="both layouts in this process (no subprocesses)"
    )
    parser.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        source, ms = measure(args.worker, args.round, args)
        print(json.dumps({"source": source, "ms": ms}))
        return
    times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    source = ""
    for r in range(args.rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            if args.in_process:
                source, ms = measure(layout, r, args)
            else:
                cmd = [sys.executable, __file__, "--worker", layout, "--round", str(r)]
                cmd += ["--steps", str(args.steps), "--size", str(args.size)]
                cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                source, ms = res["source"], res["ms"]
            times[layout].append(ms)
    where = "one process" if args.in_process else "a fresh process per measurement"
    print(
        f"{source} slices {args.size}x{args.size}, batch {args.batch}, {args.threads} thread(s), "
        f"{where}"
    )
    print("layout          median ms/step   range")
    for layout, t in times.items():
        print(f"{layout:15s} {statistics.median(t):10.1f}   {min(t):.1f}-{max(t):.1f}")
    ratios = [c / p for c, p in zip(times["channels_last"], times["contiguous"], strict=True)]
    print(
        f"channels_last / contiguous per round: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
