"""Benchmark: MIL training time per epoch (``medcl.mil.train.fit_mil``) against a minimal loop.

Usage::

    python benchmarks/mil_epoch.py                                  # 1,000 bags of 1,000 x 512
    python benchmarks/mil_epoch.py --bags 100 --instances 200 --aggregators abmil ins

Data: ``--bags`` synthetic bags of ``--instances`` x ``--dim`` float32 gaussian features, held in
memory (1,000 x 1,000 x 512 is 2 GB); half the bags are positive and hold ``--witness-rate`` of
instances drawn around a shifted mean. Built once, used by every row.

Rows, same process, same bags, CPU, one bag per step (``batch_size=1``, as CLAM and the INS
paper train):

* ``medcl <name>``: :func:`medcl.mil.train.fit_mil` on the bags with ``aggregator=<name>``,
  ``epochs=--epochs``, no validation set (so no early stopping), ``device="cpu"``; the whole
  call is timed (model construction included) and divided by the epochs, after an untimed
  warm-up call on 4 bags (both loops get one: first calls pay for allocations and kernels).
  For ``ins`` (trained over instance mini-batches of 64, :mod:`medcl.mil.ins_train`) the warm-up
  is set to 0 epochs, so the timed epochs carry the PiCO updates and the instance contrast.
  Names: ``mean``, ``abmil``, ``ins``, and ``transmil`` / ``dsmil`` when registered
  (``--aggregators`` to choose).
* ``reference abmil``: a plain PyTorch loop written here: gated attention MIL (Ilse et al. 2018:
  ``Linear(D, hidden) + ReLU``, then ``a = w^T (tanh(V h) * sigmoid(U h))`` with ``--attention``
  wide branches, softmax over the bag, attention pooling, linear classifier; medcl's defaults:
  128 and 64) with the same dropout as medcl's ``abmil`` (``--dropout``, 0.1, after the instance
  embedding and on both attention branches), AdamW, cross-entropy, shuffled bags, nothing else.
  The ceiling for ``medcl abmil`` (which also masks the bag, weights the classes and logs).

The reference and ``medcl abmil`` alternate for ``--rounds`` rounds (interleaved, so both see
the same load drift of a shared machine); their medians and the per-round ratio are printed.
Printed: seconds per epoch, bags/s and the model's parameter count; ``--profile`` adds a
cProfile of one ``medcl abmil`` epoch (top 15 functions by own time).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("mil_epoch")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bags", type=int, default=1000)
    p.add_argument("--instances", type=int, default=1000, help="instances per bag")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--witness-rate", type=float, default=0.05)
    p.add_argument("--aggregators", nargs="+", default=None, help="default: mean abmil ins (+)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128, help="reference: instance embedding width")
    p.add_argument("--attention", type=int, default=64, help="reference: attention branch width")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating reference/medcl rounds")
    p.add_argument("--dropout", type=float, default=0.1, help="reference dropout (medcl's)")
    p.add_argument("--profile", action="store_true", help="cProfile one medcl abmil epoch")
    return p


def synthetic_bags(n_bags: int, n_inst: int, dim: int, witness: float, seed: int) -> list[Any]:
    """``n_bags`` :class:`~medcl.mil.data.Bag` of ``(n_inst, dim)`` float32, labels 0/1 alternating.

    A positive bag has ``max(1, round(witness * n_inst))`` instances shifted by +0.5 on every
    feature; its instance labels mark them (1) and the rest (0).
    """
    from medcl.mil.data import Bag

    gen = torch.Generator().manual_seed(seed)
    n_pos = max(1, round(witness * n_inst))
    bags = []
    for i in range(n_bags):
        x = torch.randn(n_inst, dim, generator=gen)
        label = i % 2
        inst = torch.zeros(n_inst, dtype=torch.int64)
        if label:
            x[:n_pos] += 0.5
            inst[:n_pos] = 1
        bags.append(Bag(features=x, label=label, bag_id=f"bag{i}", patient=f"bag{i}",
                        instance_labels=inst))  # fmt: skip
    return bags


class GatedAttentionMIL(nn.Module):
    """Reference gated attention MIL (Ilse et al. 2018) for one bag ``(N, D) -> (1, C)``, with
    dropout where medcl's ``abmil`` has it (instance embedding, both attention branches)."""

    def __init__(
        self, dim: int, hidden: int, attention: int, n_classes: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.v = nn.Linear(hidden, attention)
        self.u = nn.Linear(hidden, attention)
        self.drop = nn.Dropout(dropout)
        self.w = nn.Linear(attention, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (N, hidden)
        gate = self.drop(torch.tanh(self.v(h))) * self.drop(torch.sigmoid(self.u(h)))
        a = self.w(gate)  # (N, 1)
        a = torch.softmax(a, dim=0)
        return self.classifier((a * h).sum(dim=0, keepdim=True))  # (1, C)


def reference_epoch_s(
    bags: list[Any], hidden: int, attention: int, epochs: int, seed: int, dropout: float = 0.1
) -> tuple[float, int]:
    """(seconds per epoch, parameter count) of the plain loop over ``bags``."""
    torch.manual_seed(seed)
    model = GatedAttentionMIL(bags[0].features.shape[1], hidden, attention, dropout=dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    labels = [torch.tensor([b.label]) for b in bags]
    model.train()
    for i in range(min(4, len(bags))):  # warm-up, not timed
        loss_fn(model(bags[i].features), labels[i]).backward()
    opt.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for _ in range(epochs):
        for i in torch.randperm(len(bags)).tolist():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(bags[i].features), labels[i]).backward()
            opt.step()
    seconds = (time.perf_counter() - start) / epochs
    return seconds, sum(p.numel() for p in model.parameters())


def medcl_epoch_s(bags: list[Any], name: str, epochs: int, seed: int) -> tuple[float, int]:
    """(seconds per epoch, parameter count) of ``fit_mil`` with aggregator ``name``."""
    from medcl.mil.train import MILTrainConfig, fit_mil

    options: dict[str, Any] = {
        "aggregator": name,
        "epochs": epochs,
        "batch_size": 1,
        "seed": seed,
        "device": "cpu",
        "progress": False,
    }
    # INS: its own schedule; no warm-up epoch, so the timed epochs carry the PiCO updates
    options["ins"] = {"epochs": epochs, "warmup_epochs": 0}
    cfg = MILTrainConfig(**options)
    short = MILTrainConfig(**{**options, "epochs": 1, "ins": {"epochs": 1, "warmup_epochs": 0}})
    fit_mil(bags[:4], None, short)  # warm-up, not timed
    start = time.perf_counter()
    result = fit_mil(bags, None, cfg)
    seconds = (time.perf_counter() - start) / epochs
    return seconds, sum(p.numel() for p in result.model.parameters())


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from medcl.mil.aggregators import list_aggregators

    names = args.aggregators or ["mean", "abmil", "ins"] + [
        n for n in ("transmil", "dsmil") if n in list_aggregators()
    ]
    start = time.perf_counter()
    bags = synthetic_bags(args.bags, args.instances, args.dim, args.witness_rate, args.seed)
    logger.info(
        "%d bags of %d x %d float32 (%.2f GB) built in %.1f s; %d epoch(s), %d torch threads, "
        "%d cores, load average %.2f (1 min)",
        args.bags, args.instances, args.dim, args.bags * args.instances * args.dim * 4 / 1e9,
        time.perf_counter() - start, args.epochs, torch.get_num_threads(), os.cpu_count() or 0,
        os.getloadavg()[0],
    )  # fmt: skip
    # reference and medcl abmil alternate for --rounds rounds (the median of each is shown,
    # with the per-round ratio): a shared machine's load drifts, alternating sees the same drift
    ref_times: list[float] = []
    abmil_times: list[float] = []
    params: dict[str, int] = {}
    for _ in range(args.rounds):
        seconds, params["reference"] = reference_epoch_s(
            bags, args.hidden, args.attention, args.epochs, args.seed, args.dropout
        )
        ref_times.append(seconds)
        seconds, params["abmil"] = medcl_epoch_s(bags, "abmil", args.epochs, args.seed)
        abmil_times.append(seconds)
    ratios = [m / r for m, r in zip(abmil_times, ref_times, strict=True)]
    logger.info("medcl abmil / reference per round: %s", ", ".join(f"{x:.3f}" for x in ratios))
    rows = [
        (f"reference abmil (median of {args.rounds})", statistics.median(ref_times),
         params["reference"]),
        (f"medcl abmil (median of {args.rounds})", statistics.median(abmil_times), params["abmil"]),
    ]  # fmt: skip
    for name in names:
        if name != "abmil":
            rows.append((f"medcl {name}", *medcl_epoch_s(bags, name, args.epochs, args.seed)))
    logger.info("load average %.2f (1 min) at the end", os.getloadavg()[0])
    header = f"{'training loop':30} {'s/epoch':>8} {'bags/s':>8} {'params':>9}"
    lines = [header, "-" * len(header)]
    for label, seconds, params in rows:
        lines.append(f"{label:30} {seconds:8.2f} {len(bags) / seconds:8.1f} {params:9d}")
    lines.append(f"medcl abmil / reference: median ratio {statistics.median(ratios):.3f}")
    print("\n".join(lines))
    if args.profile:
        profile_abmil(bags, args.epochs, args.seed)


def profile_abmil(bags: list[Any], epochs: int, seed: int) -> None:
    """Where medcl's abmil epoch spends its time: cProfile, top 15 by own time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    medcl_epoch_s(bags, "abmil", epochs, seed)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
