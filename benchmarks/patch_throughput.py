"""Training throughput of `medcl pretrain patch` against the bare model step, same process.

* **bare**: forward + backward + optimizer step of the same model (encoder + projection head)
  and loss on one fixed batch of two views already in memory: the ceiling.
* **ours**: the real job (`run_pretrain_patch`): JPEG decoding, the two augmented views, the
  DataLoader with workers, the Trainer (logging, scheduler, checkpoint bookkeeping). Images/s is
  read from the job's own ``metrics.csv`` over the steps after the first logging window (warm-up
  and worker start excluded).

Both count images per second (one image = two views). Data: HAM10000 under ``--data-root``
(or ``$MEDCL_DATA``), else a synthetic class-folder set written to a temporary folder.

    python benchmarks/patch_throughput.py --data-root ../shared/data --steps 30 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _synthetic_images(root: Path, n_per_class: int = 200) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (root / "images" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, size=(150, 200, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "images" / cls / f"{i}.jpg", quality=90)
    return root


def bare_images_per_s(encoder: str, size: int, batch: int, steps: int) -> float:
    from medcl.losses.ntxent import NTXentLoss
    from medcl.models.encoders import create_encoder
    from medcl.pretrain.patch import ContrastiveModel

    torch.manual_seed(0)
    model = ContrastiveModel(create_encoder(encoder), 512, 128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = NTXentLoss(0.2)
    x = torch.randn(2 * batch, 3, size, size)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        z1, z2 = model(x).chunk(2)
        loss_fn(z1, z2).backward()
        opt.step()

    for _ in range(2):
        step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - tic)


def ours_images_per_s(
    data_root: Path,
    data_path: str,
    fmt: str,
    encoder: str,
    size: int,
    batch: int,
    steps: int,
    workers: int,
    out: Path,
) -> float:
    from medcl.config import build_config
    from medcl.pretrain.patch import PatchPretrainConfig, run_pretrain_patch

    warm = max(2, steps // 5)
    cfg = build_config(
        PatchPretrainConfig,
        {
            "data": {"path": data_path, "format": fmt, "num_workers": workers},
            "encoder": encoder,
            "image_size": size,
            "batch_size": batch,
            "train": {
                "max_steps": warm + steps,
                "log_every": warm,
                "ckpt_every": 0,
                "device": "cpu",
                "progress": False,
            },
            "out_dir": str(out),
        },
    )
    run_pretrain_patch(cfg, data_root=data_root)
    with (out / "train" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # rows after the first window: steady state (the last window may be shorter: weight it)
    done = [(int(r["step"]), float(r["images_per_s"])) for r in rows]
    prev, total_img, total_s = warm, 0.0, 0.0
    for step, ips in done[1:]:
        n = (step - prev) * batch
        total_img += n
        total_s += n / ips
        prev = step
    return total_img / total_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=os.environ.get("MEDCL_DATA"))
    p.add_argument("--encoder", default="timm:resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root and (Path(args.data_root) / "ham10000").is_dir():
            root, path, fmt, what = Path(args.data_root), "ham10000", "ham10000", "HAM10000"
        else:
            root, path, fmt, what = (
                _synthetic_images(Path(tmp)),
                "images",
                "class_folders",
                "synthetic JPEGs",
            )
        bare = bare_images_per_s(args.encoder, args.size, args.batch, args.steps)
        ours = ours_images_per_s(
            root,
            path,
            fmt,
            args.encoder,
            args.size,
            args.batch,
            args.steps,
            args.workers,
            Path(tmp) / "run",
        )
    print(
        f"data: {what}; {args.encoder} at {args.size} px, batch {args.batch} x 2 views, "
        f"{torch.get_num_threads()} threads, {args.workers} workers, {os.cpu_count()} cores"
    )
    print(f"{'loop':40} {'images/s':>10}")
    print(f"{'bare forward+backward (fixed batch)':40} {bare:10.1f}")
    print(f"{'medcl pretrain patch (data + aug + loop)':40} {ours:10.1f}")
    print(f"{'ratio ours / bare':40} {ours / bare:10.2f}")


if __name__ == "__main__":
    main()
