"""``medcl pretrain ...`` and ``medcl finetune ...``: contrastive pretraining and fine-tuning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import (
    add_config_args,
    add_workspace_arg,
    is_rank_zero,
    resolve_config,
    resolved_data_root,
)


def add_parser(sub: Any) -> None:
    pre = sub.add_parser("pretrain", help="contrastive pretraining (volumes, patches)")
    pre.set_defaults(group_parser=pre)
    pre_cmds = pre.add_subparsers(dest="pretrain_command", metavar="COMMAND")
    p = pre_cmds.add_parser(
        "volume",
        help="global + local contrastive pretraining of a 2D UNet on volume slices",
        description=(
            "Chaitanya et al. (NeurIPS 2020): stage 1 trains the encoder with a global loss "
            "(gr, gd-, gd) over partitions of the volumes; stage 2 (local_stage.enabled) trains "
            "the decoder with the local loss. Writes pretrained.pt; resumes after a kill. Run "
            "with torchrun for several processes."
        ),
    )
    p.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    p.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_pretrain_volume)

    pp = pre_cmds.add_parser(
        "patch",
        help="SimCLR / SupCon pretraining of a registry encoder on 2D patches",
        description=(
            "Pretrain any registry encoder (timm:, open_clip:, monai:, medcl:) with NT-Xent "
            "(SimCLR) or SupCon on a manifest, HAM10000, Camelyon17-WILDS or class folders (the "
            "train part of a group split), or on the tissue tiles of a slide (source: slide). "
            "Writes encoder.pt, loadable as medcl:<path>; resumes after a kill."
        ),
    )
    pp.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    pp.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(pp)
    add_workspace_arg(pp)
    pp.set_defaults(func=_pretrain_patch)

    ft = sub.add_parser("finetune", help="fine-tune pretrained models with few labels")
    ft.set_defaults(group_parser=ft)
    ft_cmds = ft.add_subparsers(dest="finetune_command", metavar="COMMAND")
    f = ft_cmds.add_parser(
        "seg",
        help="segmentation from N labelled volumes or slices; Dice on held-out volumes",
        description=(
            "Train a segmentation UNet from N labelled volumes (or data.train_slices labelled "
            "slices), starting from --init pretrained.pt or 'random', report Dice per class on "
            "the test volumes and save the predicted masks as NIfTI with the input's affine."
        ),
    )
    f.add_argument("--init", default=None, help="pretrained.pt, a step checkpoint, or 'random'")
    f.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    f.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(f)
    add_workspace_arg(f)
    f.set_defaults(func=_finetune_seg)


def _pretrain_volume(args: argparse.Namespace) -> int:
    from medcl.pretrain.volume import VolumePretrainConfig, run_pretrain_volume

    cfg = resolve_config(VolumePretrainConfig, args, {"out_dir": args.out_dir})
    res = run_pretrain_volume(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    if not is_rank_zero():
        return 0
    print(f"global loss: {res.global_loss}  local loss: {res.local_loss}")
    print(f"weights: {res.weights}")
    return 0


def _pretrain_patch(args: argparse.Namespace) -> int:
    from medcl.pretrain.patch import PatchPretrainConfig, run_pretrain_patch

    cfg = resolve_config(PatchPretrainConfig, args, {"out_dir": args.out_dir})
    res = run_pretrain_patch(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    if not is_rank_zero():
        return 0
    print(f"{res.num_images} images, last loss {res.last_loss:.4f}")
    print(f"encoder: {res.encoder}  (create_encoder('medcl:{res.encoder}'))")
    return 0


def _finetune_seg(args: argparse.Namespace) -> int:
    from medcl.pretrain.finetune import FinetuneSegConfig, run_finetune_seg

    cfg = resolve_config(FinetuneSegConfig, args, {"out_dir": args.out_dir, "init": args.init})
    res = run_finetune_seg(cfg, workspace=args.workspace, data_root=resolved_data_root(args))
    if not is_rank_zero():
        return 0
    print(f"{'class':24} dice")
    for name, value in res.class_dice.items():
        print(f"{name:24} {value:.4f}")
    print(f"{'mean':24} {res.mean_dice:.4f}")
    print(f"outputs: {res.out_dir}")
    return 0
