"""``medcl data ...``: look at volumes, slides and labelled image sets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, print_summary, resolve_config


def add_parser(sub: Any) -> None:
    group = sub.add_parser("data", help="inspect volumes, slides and labelled image sets")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="data_command", metavar="COMMAND")

    p = cmds.add_parser(
        "inspect",
        help="print what a volume, slide or image set is and render a preview PNG",
        description=(
            "Print what PATH holds (a NIfTI/NRRD/DICOM volume, a folder of volumes, a whole-slide "
            "image, or a labelled image set) and write preview.png, summary.json and config.yaml."
        ),
    )
    p.add_argument("path", type=Path, help="file or folder to inspect")
    p.add_argument("--kind", choices=["auto", "volume", "volumes", "slide", "images"], default=None)
    p.add_argument("--label", type=Path, default=None, help="label map read with a volume")
    p.add_argument("--frame", type=int, default=None, help="frame of a 4D volume")
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID to read")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel of a slide")
    p.add_argument(
        "--format",
        dest="image_format",
        default=None,
        help="image-set format (auto, manifest, ham10000, camelyon17, class_folders)",
    )
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from medcl.jobs.inspect import InspectConfig, run_inspect

    flags = {
        "path": args.path,
        "kind": args.kind,
        "label": args.label,
        "frame": args.frame,
        "series_uid": args.series_uid,
        "mpp": args.mpp,
        "image_format": args.image_format,
        "out_dir": args.out_dir,
    }
    cfg = resolve_config(InspectConfig, args, flags)
    result = run_inspect(cfg, workspace=args.workspace)
    print_summary(result.summary)
    print(f"preview: {result.preview}")
    print(f"outputs: {result.out_dir}")
    return 0
