"""Benchmark: medcl's local contrastive loss against plain implementations of the same loss.

Usage::

    python benchmarks/local_loss.py                   # B=8, C=64, 64x64 maps, 13x13 regions of 3 px
    python benchmarks/local_loss.py --dtype float64   # exactness check in double precision

Implementations (all compute the same quantity: the loss of
:class:`medcl.losses.local.LocalContrastiveLoss`, non-domain variant, mean over all anchors):

* ``ours``: ``LocalContrastiveLoss`` (pool the region grid with ``avg_pool2d``, ``(2R x 2R)``
  similarities per image, chunks of images, each chunk checkpointed);
* ``ours-nockpt``: the same with ``checkpoint=False`` (chunks keep their similarities);
* ``dense``: the plain "pixel similarity" way: per image, the full ``(2HW x 2HW)`` matrix of
  pixel dot products of both views, averaged over each pair of regions (the region-masked mean,
  done with ``avg_pool2d`` on both axes of the matrix rather than a ``(2R x 2HW)`` mask matmul,
  which would be ~40x more arithmetic for the same numbers), then cosine / T and cross entropy;
* ``loop``: the plain "per-region loop" way: slice every region in a Python loop, average it,
  stack, then cross entropy on the ``(2R x 2R)`` logits of every image.

Each line of the table is a fresh subprocess (``--worker``), so peak memories do not mix.

Peak memory, and why it is measured like this: ``tracemalloc`` does not see torch's allocations,
and ``ru_maxrss`` cannot be reset, so a transient peak before the step (a temporary made while
building the inputs, the warm-up) would hide part of the step's own peak. On Linux each worker,
after importing torch, a small warm-up of the same implementation (thread pools, caches) and
creating the inputs, resets the kernel's resident high-water mark (``echo 5 >
/proc/self/clear_refs``), notes the resident size ``VmRSS``, runs one forward + backward and
reads the high-water mark ``VmHWM``: ``VmHWM - VmRSS`` is the extra resident memory the loss
needed at its peak, input gradients included (2 x B*C*H*W*4 bytes, 16 MiB at the defaults).
The workers also run with fixed glibc malloc thresholds (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` = 64 KiB): every large block is its own ``mmap``, returned to the
system when freed, so freed heap pages cannot be silently reused by the step. Without a
resettable high-water mark the worker falls back to ``ru_maxrss`` deltas (may under-count).
On CUDA it uses ``torch.cuda.max_memory_allocated`` minus the allocation before the step.

Time: the median of ``--repeats`` forward + backward passes after the memory pass, one thread
by default (``--threads``), so runs on a shared machine stay comparable.

Acceptance (the medcl issue): values equal to 1e-5, our peak memory at most 1/4 of ``dense``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from medcl.losses.local import LocalContrastiveLoss, region_axis

IMPLEMENTATIONS = ("ours", "ours-nockpt", "dense", "loop")


def _ntxent_targets(n_regions: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(2 * n_regions, device=device)
    return (idx + n_regions) % (2 * n_regions)


def _masked_logits(cos: torch.Tensor, temperature: float) -> torch.Tensor:
    n = cos.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=cos.device)
    return (cos / temperature).masked_fill(eye, float("-inf"))


def reference_dense(
    f1: torch.Tensor, f2: torch.Tensor, region_size: int, num_regions: int, temperature: float
) -> torch.Tensor:
    """Pixel-level similarity per image, averaged over region pairs."""
    b, c, h, w = f1.shape
    y0, sy = region_axis(h, region_size, num_regions, None)
    x0, sx = region_axis(w, region_size, num_regions, None)
    ey = region_size + (num_regions - 1) * sy
    ex = region_size + (num_regions - 1) * sx
    r = num_regions * num_regions
    targets = _ntxent_targets(r, f1.device)
    losses = []
    for i in range(b):
        x = torch.stack([f1[i], f2[i]])[:, :, y0 : y0 + ey, x0 : x0 + ex]  # (2, C, ey, ex)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)  # (2P, C), P = ey * ex
        gram = pixels @ pixels.T  # (2P, 2P) pixel dot products
        # Average the columns over each region, then the rows: <mean_r, mean_s> for all r, s.
        cols = F.avg_pool2d(gram.view(-1, 2, ey, ex), region_size, stride=(sy, sx))
        cols = cols.reshape(2, ey, ex, 2 * r).permute(0, 3, 1, 2).reshape(-1, 2 * r, ey, ex)
        rows = F.avg_pool2d(cols, region_size, stride=(sy, sx))  # (2, 2R, n, n)
        dots = rows.reshape(2, 2 * r, r).permute(1, 0, 2).reshape(2 * r, 2 * r).T
        norms = dots.diagonal().sqrt()
        cos = dots / norms[:, None] / norms[None, :]
        losses.append(F.cross_entropy(_masked_logits(cos, temperature), targets))
    return torch.stack(losses).mean()


def reference_loop(
    f1: torch.Tensor, f2: torch.Tensor, region_size: int, num_regions: int, temperature: float
) -> torch.Tensor:
    """A Python loop over the regions, then one cross entropy over every image's anchors."""
    _, _, h, w = f1.shape
    y0, sy = region_axis(h, region_size, num_regions, None)
    x0, sx = region_axis(w, region_size, num_regions, None)
    k = region_size
    views = []
    for f in (f1, f2):
        regions = []
        for iy in range(num_regions):
            for ix in range(num_regions):
                y, x = y0 + iy * sy, x0 + ix * sx
                regions.append(f[:, :, y : y + k, x : x + k].mean(dim=(2, 3)))
        views.append(torch.stack(regions, dim=1))  # (B, R, C)
    emb = F.normalize(torch.cat(views, dim=1), dim=-1)  # (B, 2R, C)
    r = num_regions * num_regions
    logits = _masked_logits(emb @ emb.transpose(1, 2), temperature)
    targets = _ntxent_targets(r, f1.device).repeat(f1.shape[0])
    return F.cross_entropy(logits.reshape(-1, 2 * r), targets)


def _build(
    impl: str, args: argparse.Namespace
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if impl in ("ours", "ours-nockpt"):
        return LocalContrastiveLoss(
            region_size=args.region_size,
            num_regions=args.num_regions,
            temperature=args.temperature,
            chunk_size=args.chunk_size,
            checkpoint=impl == "ours",
        )
    fn = reference_dense if impl == "dense" else reference_loop

    def run(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return fn(f1, f2, args.region_size, args.num_regions, args.temperature)

    return run


def _inputs(args: argparse.Namespace, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    f1 = torch.randn(batch, args.channels, size, size, generator=g, dtype=dtype)
    f2 = torch.randn(batch, args.channels, size, size, generator=g, dtype=dtype)
    f2.mul_(0.5).add_(f1)  # in place: no temporary that would raise the baseline
    return (
        f1.to(args.device).requires_grad_(True),
        f2.to(args.device).requires_grad_(True),
    )


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), None when unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _start_peak() -> tuple[str, float]:
    """Reset the resident high-water mark if the kernel allows; the baseline in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return "hwm", rss / 1024
    except OSError:
        pass
    return "maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _end_peak(mode: str, baseline: float) -> float:
    hwm = _status_kib("VmHWM") if mode == "hwm" else None
    if hwm is not None:
        return hwm / 1024 - baseline
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline


def worker(args: argparse.Namespace) -> None:
    """Measure one implementation; print a JSON line; save the loss and gradients."""
    torch.set_num_threads(args.threads)
    loss_fn = _build(args.worker, args)
    cuda = args.device.startswith("cuda")
    # Warm-up on one image of the same size (thread pools, kernel caches).
    w1, w2 = _inputs(args, size=args.size, batch=1)
    loss_fn(w1, w2).backward()
    del w1, w2
    f1, f2 = _inputs(args, size=args.size, batch=args.batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        mode, baseline = _start_peak()
    value = loss_fn(f1, f2)
    grads = torch.autograd.grad(value, [f1, f2])
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = _end_peak(mode, baseline)
    torch.save({"value": value.detach().cpu(), "grads": [g.cpu() for g in grads]}, args.result_file)
    del grads
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        torch.autograd.grad(loss_fn(f1, f2), [f1, f2])
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_mib": peak, "time_s": statistics.median(times)}))


def _run_worker(impl: str, argv: list[str], result_file: Path) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    cmd += ["--worker", impl, "--result-file", str(result_file)]
    # Fixed glibc thresholds: every block >= 64 KiB is its own mmap, returned to the system when
    # freed, so memory freed before the baseline cannot hide later allocations.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"worker {impl} failed:\n{out.stderr.strip()}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _unpack(
    saved: dict[str, torch.Tensor | list[torch.Tensor]],
) -> tuple[float, list[torch.Tensor]]:
    value, grads = saved["value"], saved["grads"]
    assert isinstance(value, torch.Tensor) and isinstance(grads, list)
    return float(value), grads


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="feature map height = width")
    p.add_argument("--region-size", type=int, default=3)
    p.add_argument("--num-regions", type=int, default=13)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    impls = ["ours", *[i for i in args.impls if i != "ours"]]
    rows: dict[str, dict[str, float]] = {}
    saved: dict[str, dict[str, torch.Tensor | list[torch.Tensor]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in impls:
            path = Path(tmp) / f"{impl}.pt"
            rows[impl] = _run_worker(impl, argv, path)
            saved[impl] = torch.load(path)
    ours = rows["ours"]
    print(
        f"local loss, B={args.batch} C={args.channels} {args.size}x{args.size}, "
        f"{args.num_regions}x{args.num_regions} regions of {args.region_size} px, "
        f"{args.dtype}, {args.device}, {args.threads} thread(s), forward + backward"
    )
    header = (
        f"{'impl':<12} {'loss':>12} {'|dloss|':>9} {'max|dgrad|':>11} {'rel dgrad':>9} "
        f"{'peak MiB':>9} {'mem ratio':>9} {'time s':>8} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    values_ok = True
    for impl, row in rows.items():
        value, grads = _unpack(saved[impl])
        value0, grads0 = _unpack(saved["ours"])
        dloss = abs(value - value0)
        dgrad = max((g - g0).abs().max().item() for g, g0 in zip(grads, grads0, strict=True))
        scale = max(g0.abs().max().item() for g0 in grads0)
        mem_ratio = row["peak_mib"] / max(ours["peak_mib"], 1e-9)
        time_ratio = row["time_s"] / ours["time_s"]
        print(
            f"{impl:<12} {value:>12.7f} {dloss:>9.1e} {dgrad:>11.1e} "
            f"{dgrad / scale:>9.1e} {row['peak_mib']:>9.1f} {mem_ratio:>9.2f} "
            f"{row['time_s']:>8.3f} {time_ratio:>10.2f}"
        )
        values_ok = values_ok and dloss <= 1e-5
    print("(mem ratio, time ratio: that implementation divided by ours)")
    print(f"values equal to 1e-5: {'yes' if values_ok else 'NO'}")
    memory_ok = True
    if "dense" in rows:
        memory_ok = rows["dense"]["peak_mib"] >= 4 * ours["peak_mib"]
        print(f"ours peak memory <= 1/4 of dense: {'yes' if memory_ok else 'NO'}")
    return 0 if values_ok and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
