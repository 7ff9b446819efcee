"""``medcl eval ...``: the evaluations whose tables the README reports."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from medcl.cli.common import (
    add_config_args,
    add_evaluation_args,
    add_workspace_arg,
    resolve_config,
    resolved_data_root,
)

#: the evaluations that write a README table: command -> (module, config class, run function);
#: each module is imported only when its command runs (``medcl --help`` stays light)
TABLE_EVALS: dict[str, tuple[str, str, str]] = {
    "volume-ssl": ("medcl.eval.volume_ssl", "VolumeSSLEvalConfig", "run_volume_ssl_eval"),
    "few-label": ("medcl.eval.few_label", "FewLabelEvalConfig", "run_few_label_eval"),
    "patch-ssl": ("medcl.eval.patch_ssl", "PatchSSLEvalConfig", "run_patch_ssl_eval"),
    "patch-da": ("medcl.eval.patch_da", "PatchDAEvalConfig", "run_patch_da_eval"),
    "mil-ham": ("medcl.mil.ham_eval", "MILHamEvalConfig", "run_mil_ham_eval"),
}


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
    add_evaluation_args(p, "volume-ssl")
    p.set_defaults(func=_table_eval, table_eval="volume-ssl")

    fl = cmds.add_parser(
        "few-label",
        help="Chaitanya et al. on a patient split (ACDC): random init vs GR / GD- / GD / "
        "GD- + local with 1, 2, 8 labelled volumes, paired differences over seeds",
        description=(
            "Pretrain each method on the non-test patients, fine-tune with N labelled volumes "
            "per seed (steps chosen on the validation patients), and report Dice per structure "
            "on the test patients with 95% intervals. Finished runs are skipped on a re-run."
        ),
    )
    add_evaluation_args(fl, "few-label")
    fl.set_defaults(func=_table_eval, table_eval="few-label")

    sg = cmds.add_parser(
        "seg",
        help="evaluate a fine-tuned segmentation model on a folder of labelled volumes",
        description=(
            "Dice and HD95 per structure and volume (CSV), a summary table, and the predicted "
            "masks as NIfTI with each input's affine. Folders: ACDC (patientNNN/), MSD, BIDS or "
            "flat image/label pairs."
        ),
    )
    sg.add_argument("--model", type=Path, required=True, help="model.pt from medcl finetune seg")
    sg.add_argument("--data", type=Path, required=True, help="folder of labelled volumes")
    sg.add_argument(
        "--layout",
        choices=["auto", "acdc", "msd", "bids", "flat"],
        default="auto",
        help="folder layout (default: recognised from the folder)",
    )
    sg.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    sg.add_argument(
        "--no-masks", action="store_true", help="do not write the predicted masks as NIfTI"
    )
    add_workspace_arg(sg)
    sg.set_defaults(func=_seg)

    pr = cmds.add_parser(
        "probe",
        help="k-NN and linear-probe (balanced) accuracy of frozen encoders",
        description="Probe each encoder on the test part of a group-aware split.",
    )
    pr.add_argument(
        "--encoder",
        dest="encoders",
        action="append",
        default=None,
        help="registry name (repeatable), e.g. timm:resnet18 or medcl:encoder.pt",
    )
    pr.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    pr.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(pr)
    add_workspace_arg(pr)
    pr.set_defaults(func=_probe)

    ps = cmds.add_parser(
        "patch-ssl",
        help="random init vs SimCLR vs SupCon, k-NN and linear probe over seeds",
    )
    add_evaluation_args(ps, "patch-ssl")
    ps.set_defaults(func=_table_eval, table_eval="patch-ssl")

    pd_ = cmds.add_parser(
        "patch-da",
        help="patch pretraining as domain adaptation: source-site probe tested on the target "
        "site; random init vs ImageNet vs ImageNet + SimCLR on both sites' unlabelled images",
    )
    add_evaluation_args(pd_, "patch-da")
    pd_.set_defaults(func=_table_eval, table_eval="patch-da")

    mh = cmds.add_parser(
        "mil-ham",
        help="HAM10000 MIL bags (melanoma witnesses): mean pooling vs ABMIL vs INS, bag and "
        "instance AUC over seeds",
    )
    add_evaluation_args(mh, "mil-ham")
    mh.set_defaults(func=_table_eval, table_eval="mil-ham")


def _seg(args: argparse.Namespace) -> int:
    from medcl.eval.seg_job import run_eval_seg

    result = run_eval_seg(
        args.model,
        args.data,
        out_dir=args.out_dir,
        workspace=args.workspace,
        layout=args.layout,
        save_masks=not args.no_masks,
    )
    print(result.table)
    print(f"scores: {result.out_dir / 'scores.csv'}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from medcl.eval.probe_job import ProbeConfig, run_probe

    cfg = resolve_config(ProbeConfig, args, {"out_dir": args.out_dir, "encoders": args.encoders})
    rows = run_probe(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    print(f"{'encoder':40} {'kNN bal.acc':>12} {'linear bal.acc':>15}")
    for r in rows:
        print(f"{r.encoder:40} {r.knn_balanced_accuracy:12.3f} {r.linear_balanced_accuracy:15.3f}")
    return 0


def _table_eval(args: argparse.Namespace) -> int:
    """Run one of :data:`TABLE_EVALS` from its config and print its table."""
    module_name, config_name, run_name = TABLE_EVALS[args.table_eval]
    module = importlib.import_module(module_name)
    cfg = resolve_config(getattr(module, config_name), args, {"out_dir": args.out_dir})
    _, table = getattr(module, run_name)(
        cfg, workspace=args.workspace, data_root=resolved_data_root(args), readme=args.readme
    )
    print(table)
    return 0
