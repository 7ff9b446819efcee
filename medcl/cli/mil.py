"""``medcl mil ...``: multiple-instance learning on slide feature bags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, is_rank_zero, resolve_config
from medcl.cli.mil_heatmap import add_heatmap_command


def add_parser(sub: Any) -> None:
    group = sub.add_parser("mil", help="MIL whole-slide classifiers on feature bags")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="mil_command", metavar="COMMAND")
    p = cmds.add_parser(
        "train",
        help="cross-validate a MIL aggregator (patient-grouped folds) and save each fold",
        description=(
            "Reads a manifest CSV (columns bag,label[,patient]; bag = a features .h5/.pt), "
            "trains --aggregator on patient-grouped stratified folds and writes "
            "<workspace>/mil/<settings>/fold_<k>/{model.pt,metrics.json,predictions.csv}."
        ),
    )
    p.add_argument("--bags", type=Path, required=True, help="manifest CSV: bag,label[,patient]")
    p.add_argument("--folds", type=int, default=None, help="CV folds (1: one train/val split)")
    p.add_argument("--aggregator", default=None, help="mean, max, abmil, transmil or ins")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs (for ins: its fixed schedule, ins.epochs)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_train)
    add_heatmap_command(cmds)


def _train(args: argparse.Namespace) -> int:
    from medcl.mil.runner import run_mil_train
    from medcl.mil.train import MILTrainConfig

    cfg = resolve_config(
        MILTrainConfig,
        args,
        {
            "folds": args.folds,
            "aggregator": args.aggregator,
            "epochs": args.epochs,
            "seed": args.seed,
            "device": args.device,
        },
    )
    if args.epochs is not None and cfg.aggregator == "ins":
        cfg = cfg.model_copy(update={"ins": cfg.ins.model_copy(update={"epochs": args.epochs})})
    res = run_mil_train(args.bags, cfg, workspace=args.workspace, out_dir=args.out_dir)
    if is_rank_zero():
        print(f"{cfg.aggregator} on {len(res.class_names)} classes {res.class_names}")
        print(res.table)
        print(f"outputs: {res.out_dir}")
    return 0
