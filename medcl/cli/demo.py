"""``medcl demo``: the quick end-to-end run on sample data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, resolve_config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipelines on the sample data in quick mode",
        description=(
            "Run medcl on the sample data (--data-root or $MEDCL_DATA; synthetic stand-ins "
            "when neither is set) and write everything into the workspace."
        ),
    )
    p.add_argument("--data-root", type=Path, default=None, help="real sample-data folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from medcl.jobs.demo import DemoConfig, run_demo
    from medcl.workspace import data_root, workspace_root

    cfg = resolve_config(DemoConfig, args, {})
    ws = workspace_root(args.workspace)
    results = run_demo(cfg, workspace=ws, data_root=data_root(args.data_root))
    print(f"{'kind':8} {'input':60} preview")
    for res in results:
        print(f"{res.kind:8} {Path(res.summary['path']).name:60} {res.preview}")
    print(f"workspace: {ws}")
    return 0
