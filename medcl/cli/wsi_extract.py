"""``medcl wsi extract``: tile features for a tiling job (one process, or torchrun for many GPUs).

``add_extract_command(wsi_sub)`` adds the sub-command to the ``medcl wsi`` group; many processes
run it as ``torchrun --nproc_per_node N -m medcl wsi extract ...`` (errors and exit codes are the
``medcl`` entry point's).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, is_rank_zero, print_summary, resolve_config


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", type=Path, default=None, help="tiling job folder (holds patches/)")
    p.add_argument("--encoder", default=None, help="registry encoder, e.g. timm:resnet50")
    p.add_argument("--weights", type=Path, default=None, help="local weights for the encoder")
    p.add_argument("--slides", type=Path, default=None, help="slide folder or CSV (slide,mpp)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None, help="tile-reading processes")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--image-size", type=int, default=None, help="encoder input size override")
    add_config_args(p)
    p.set_defaults(func=run_extract)


def add_extract_command(wsi_sub: Any) -> argparse.ArgumentParser:
    """Add ``extract`` to the ``medcl wsi`` sub-parsers; returns its parser."""
    p = wsi_sub.add_parser(
        "extract",
        help="encode the tiles of a tiling job into feature bags (resumable, torchrun-aware)",
        description=(
            "For each patches/<stem>.h5 of the job writes features_<settings>/<stem>.h5 "
            "(features, coords), the folder named by the encoder, its weights' sha256, the "
            "input size and the precision; finished bags are skipped, interrupted ones resumed, "
            "a folder made with other settings refused. Under torchrun the slides are shared "
            "out over the processes."
        ),
    )
    _add_arguments(p)
    return p


def run_extract(args: argparse.Namespace) -> int:
    """Handler of ``medcl wsi extract``: resolve the config, run the job, print the summary."""
    from medcl.wsi.extract_job import ExtractConfig, run_extract_job

    flags = {
        "job": args.job,
        "encoder": args.encoder,
        "weights": args.weights,
        "slides": args.slides,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "precision": args.precision,
        "image_size": args.image_size,
    }
    cfg = resolve_config(ExtractConfig, args, flags)
    summary = run_extract_job(cfg)
    if is_rank_zero():
        print_summary(summary)
    return 1 if summary["failed"] else 0
