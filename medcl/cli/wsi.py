"""``medcl wsi ...``: the whole-slide pipeline (tissue and tiles, then features)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medcl.cli import wsi_extract
from medcl.cli.common import add_config_args, add_workspace_arg, print_summary, resolve_config


def add_parser(sub: Any) -> None:
    group = sub.add_parser("wsi", help="whole-slide images: tissue, tiles, features")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="wsi_command", metavar="COMMAND")
    add_tile_command(cmds)
    wsi_extract.add_extract_command(cmds)


def add_tile_command(cmds: Any) -> argparse.ArgumentParser:
    """Add ``tile`` to the ``medcl wsi`` sub-parsers; returns its parser."""
    p = cmds.add_parser(
        "tile",
        help="detect tissue and write tile coordinates for every slide (resumable)",
        description=(
            "For each slide of a folder (recursive, by extension) or a CSV (slide[,mpp]) writes "
            "a thumbnail, a tissue mask, QuPath GeoJSON contours and patches/<stem>.h5 into "
            "<workspace>/wsi/<job>/<settings>/; finished slides are skipped, a slide that fails "
            "is recorded in status.csv and the others go on. Exit code 2 when slides were refused "
            "for bad input (unreadable, over the size limits, no mpp; one line each on stderr), "
            "1 when any slide failed otherwise."
        ),
    )
    p.add_argument("--slides", type=Path, default=None, help="slide folder or CSV (slide,mpp)")
    p.add_argument(
        "--mpp", type=float, default=None, help="level-0 um/px for slides whose metadata has none"
    )
    p.add_argument("--target-mpp", type=float, default=None, help="tile resolution (um/px)")
    p.add_argument("--magnification", type=float, default=None, help="or as 20, 40 (10/mpp)")
    p.add_argument("--patch-size", type=int, default=None, help="tile side in px at target")
    p.add_argument("--name", default=None, help="job name (default: the slides' folder name)")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=run_tile)
    return p


def run_tile(args: argparse.Namespace) -> int:
    """Handler of ``medcl wsi tile``: resolve the config, run the job, print the summary."""
    from medcl.wsi.jobs import TileJobConfig, run_tile_job

    flags = {
        "slides": args.slides,
        "mpp": args.mpp,
        "target_mpp": args.target_mpp,
        "magnification": args.magnification,
        "patch_size": args.patch_size,
        "job_name": args.name,
        "out_dir": args.out_dir,
    }
    # a resolution flag replaces the other way of giving it (from the config file or --set)
    if args.magnification is not None:
        args.overrides = [*args.overrides, "target_mpp=null"]
    elif args.target_mpp is not None:
        args.overrides = [*args.overrides, "magnification=null"]
    cfg = resolve_config(TileJobConfig, args, flags)
    summary = run_tile_job(cfg, workspace=args.workspace)
    print_summary(summary)
    return tile_exit_code(summary)


def tile_exit_code(summary: dict[str, Any]) -> int:
    """0 when no slide failed; 2 when every failure was a refused input (each printed as one
    ``medcl: error:`` line on stderr, naming the file); 1 when any failure was unexpected."""
    failures: dict[str, str] = summary["failures"]
    refused = [path for path in summary["refused"] if path in failures]
    for path in refused:
        message = failures[path]
        print(
            f"medcl: error: {message if path in message else f'{path}: {message}'}", file=sys.stderr
        )
    if not failures:
        return 0
    return 2 if len(refused) == len(failures) else 1
