"""``medcl shift report``: how far one site is from another in an encoder's embedding space."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, resolve_config, resolved_data_root


def _values(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parser(sub: Any) -> None:
    group = sub.add_parser("shift", help="measure the shift between two sites or image sets")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="shift_command", metavar="COMMAND")
    p = cmds.add_parser(
        "report",
        help="domain AUC, per-class shift, label mix and a t-SNE map (before and after CCI)",
        description=(
            "Side A and side B are values of the image set's domain column (--side-a/--side-b, "
            "e.g. HAM10000 with --set data.format_kwargs={domain_column: dataset}) or two image "
            "sets (--set data_b.path=...). Writes report.json, report.md and map_*.png."
        ),
    )
    p.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    p.add_argument("--side-a", type=_values, default=None, help="domain values of side A (a,b)")
    p.add_argument("--side-b", type=_values, default=None, help="domain values of side B")
    p.add_argument("--encoder", default=None, help="registry encoder (default: offline ImageNet)")
    p.add_argument("--cci-encoder", default=None, help="its CCI fine-tune, medcl:PATH")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from medcl.retrieval.shift import ShiftReportConfig, run_shift_report

    flags = {
        "domains_a": args.side_a,
        "domains_b": args.side_b,
        "encoder": args.encoder,
        "cci_encoder": args.cci_encoder,
        "out_dir": args.out_dir,
    }
    cfg = resolve_config(ShiftReportConfig, args, flags)
    report = run_shift_report(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    print((Path(report["out_dir"]) / "report.md").read_text(), end="")
    print(f"report: {report['out_dir']}")
    return 0
