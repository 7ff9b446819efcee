"""``medcl retrieval ...``: demonstration retrieval for in-context learning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, is_rank_zero, resolve_config


def add_parser(sub: Any) -> None:
    group = sub.add_parser("retrieval", help="demonstration retrieval for in-context learning")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(dest="retrieval_command", metavar="COMMAND")
    p = cmds.add_parser(
        "train-cci",
        help="fine-tune a registry encoder with class-conditioned contrastive invariance",
        description=(
            "InvariantSelectPR's encoder: same class positive (cross-domain pairs weighted up), "
            "plus invariance to a domain-perturbed view; writes encoder.pt (medcl:<path>)."
        ),
    )
    p.add_argument("--encoder", default=None, help="starting registry encoder")
    p.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_train_cci)

    e = cmds.add_parser(
        "eval",
        help="RandomPR vs TopKNearestPR vs InvariantSelectPR: agreement@k and k-NN accuracy",
        description=(
            "Pool = source domains, queries = target domains (no group on both sides); for each "
            "seed trains CCI, embeds, selects and scores k in ks. Resumes from cached runs."
        ),
    )
    e.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    e.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="write the table into this README between the retrieval markers",
    )
    e.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(e)
    add_workspace_arg(e)
    e.set_defaults(func=_eval)


def _train_cci(args: argparse.Namespace) -> int:
    from medcl.retrieval.cci_train import CCITrainConfig, run_train_cci

    cfg = resolve_config(CCITrainConfig, args, {"out_dir": args.out_dir, "encoder": args.encoder})
    res = run_train_cci(cfg, workspace=args.workspace, data_root=args.data_root)
    if is_rank_zero():
        print(
            f"{res.num_images} images from {res.num_domains} domains, last loss {res.last_loss:.4f}"
        )
        print(f"encoder: {res.encoder}  (create_encoder('medcl:{res.encoder}'))")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medcl.retrieval.evaluate import RetrievalEvalConfig, run_retrieval_eval

    cfg = resolve_config(RetrievalEvalConfig, args, {"out_dir": args.out_dir})
    _, table = run_retrieval_eval(
        cfg, workspace=args.workspace, data_root=args.data_root, readme=args.readme
    )
    print(table)
    return 0
