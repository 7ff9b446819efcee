"""``medcl eval ...``: the evaluations whose tables the README reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, resolve_config


def add_parser(sub: Any) -> None:
    group = sub.add_parser("eval", help="rerunnable evaluations (tables in the README)")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="eval_command", metavar="COMMAND")
    p = cmds.add_parser(
        "volume-ssl",
        help="random init vs GR vs GD- vs GD- + local, fine-tuned with few labels",
        description=(
            "Pretrain with each method and seed, fine-tune every task, and report mean Dice "
            "(mean +- std over seeds). Finished runs are skipped on a re-run."
        ),
    )
    p.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="write the table into this README between the volume-ssl markers",
    )
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_volume_ssl)


def _volume_ssl(args: argparse.Namespace) -> int:
    from medcl.pretrain.evaluate import VolumeSSLEvalConfig, run_volume_ssl_eval
    from medcl.workspace import data_root

    cfg = resolve_config(VolumeSSLEvalConfig, args, {"out_dir": args.out_dir})
    _, table = run_volume_ssl_eval(
        cfg, workspace=args.workspace, data_root=data_root(args.data_root), readme=args.readme
    )
    print(table)
    return 0
