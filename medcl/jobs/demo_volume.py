"""Demo stage "volume": fine-tune a small 2D UNet on labelled volumes, predict, write cases.

Quick mode of ``medcl finetune seg`` (:func:`medcl.pretrain.finetune.run_finetune_seg`): a few
labelled slices of each volume train a small UNet for a few steps; every volume is then predicted
whole, its mask saved as NIfTI on the image's own grid, and scored with Dice per class against
the ground truth on the slices not used for training. Each volume becomes one review case with
the image, the predicted mask, the ground truth restricted to the demo classes, the label names,
the Dice scores, and the model's confidence per class (mean softmax probability over the voxels
predicted as that class) as ``scores``.

Stage folder layout::

    finetune/                 the fine-tuning job (config, model.pt, metrics.json, predictions/)
    <id>_gt.nii.gz            ground truth with only the demo classes (others -> background)
    predictions.jsonl         one volume case per input
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from pydantic import Field

from medcl.config import StrictModel
from medcl.engine.trainer import TrainConfig
from medcl.errors import InvalidInputError
from medcl.models.unet import UNet, UNetConfig, create_unet
from medcl.pretrain.finetune import FinetuneDataConfig, FinetuneSegConfig, run_finetune_seg
from medcl.pretrain.volume_data import VolumeSource, load_volumes
from medcl.pretrain.weights import load_unet_weights
from medcl.review.model_card import ModelCard
from medcl.review.predictions import (
    PredictionRecord,
    artifact_ref,
    finite_or_none,
    write_predictions,
)
from medcl.workspace import data_path, slug

log = logging.getLogger(__name__)

MODEL_NAME = "unet2d"


class VolumeInput(StrictModel):
    """A labelled NIfTI volume (paths relative to the data root, or absolute)."""

    image: Path
    label: Path


def _default_volumes() -> list[VolumeInput]:
    return [
        VolumeInput(
            image=Path("volumes/totalsegmentator/example_ct_sm.nii.gz"),
            label=Path("volumes/totalsegmentator/example_seg.nii.gz"),
        )
    ]


def _default_classes() -> dict[str, int]:
    # TotalSegmentator v2 label values of the example CT
    return {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}


class VolumeDemoConfig(StrictModel):
    """The volume stage: inputs (real data) and the quick fine-tuning settings."""

    volumes: list[VolumeInput] = Field(default_factory=_default_volumes)
    classes: dict[str, int] = Field(default_factory=_default_classes)
    site: str = "totalsegmentator"
    size: tuple[int, int] = (96, 96)
    train_slices: int = Field(default=12, ge=1)
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    channels: tuple[int, ...] = (8, 16, 32, 64)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def short_sha(path: Path, n: int = 8) -> str:
    """The first ``n`` hex digits of the file's SHA-256 (a model version)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:n]


def write_class_ground_truth(label: Path, values: list[int], out: Path) -> Path:
    """Copy of the label map ``label`` keeping only ``values`` (others -> 0), same affine."""
    img: Any = nib.load(label)
    arr = np.asarray(img.dataobj)
    kept = np.where(np.isin(arr, values), arr, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(kept, img.affine), out)
    return out


@torch.no_grad()
def class_confidence(model: UNet, image: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean softmax probability of each class over the pixels predicted as it.

    Args:
        model: the segmentation UNet (eval mode is set here).
        image: ``(Z, H, W)`` prepared slices in [0, 1].
        n_classes: classes including background (index 0).

    Returns:
        ``(n_classes,)`` float64; NaN for a class predicted nowhere.
    """
    model.eval()
    sums = np.zeros(n_classes)
    counts = np.zeros(n_classes)
    for start in range(0, image.shape[0], 16):
        x = torch.from_numpy(np.ascontiguousarray(image[start : start + 16][:, None]))
        prob = torch.softmax(model(x.float()), dim=1)
        top, pred = prob.max(dim=1)
        for c in range(n_classes):
            sel = pred == c
            sums[c] += float(top[sel].sum())
            counts[c] += int(sel.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _resolve(path: Path, root: Path | None) -> Path:
    full = data_path(path, root, must_exist=False)
    if not full.exists():
        raise InvalidInputError(full, "demo volume not found")
    return full


def run_volume_demo(
    cfg: VolumeDemoConfig, out: Path, *, data_root: Path | None, device: str = "cpu"
) -> Path:
    """Fine-tune, predict and write ``out/predictions.jsonl``; returns its path."""
    sources = []
    for item in cfg.volumes:
        image, label = _resolve(item.image, data_root), _resolve(item.label, data_root)
        sources.append(VolumeSource(image=image, label=label, id=slug(_stem(image))))
    names, values = list(cfg.classes), list(cfg.classes.values())
    data = FinetuneDataConfig(
        size=cfg.size,
        train=sources,
        test=sources,
        train_slices=min(cfg.train_slices, _labelled_slices(sources, values)),
        classes=cfg.classes,
        other_labels="background",
    )
    model_cfg = UNetConfig(
        channels=cfg.channels,
        global_hidden_dim=64,
        global_dim=32,
        local_hidden_dim=32,
        local_dim=32,
    )
    train = TrainConfig(
        max_steps=cfg.steps,
        device="cuda" if device == "cuda" else "cpu",
        log_every=max(1, cfg.steps // 5),
        ckpt_every=0,
        keep_last=1,
        progress=False,
        tensorboard=False,
        seed=0,
    )
    job = FinetuneSegConfig(
        name="volume-demo",
        data=data,
        model=model_cfg,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        augment=False,
        train=train,
        out_dir=out / "finetune",
    )
    result = run_finetune_seg(job)
    metrics = json.loads((result.out_dir / "metrics.json").read_text(encoding="utf-8"))
    dice_by_id = {v["volume"]: v for v in metrics["volumes"]}

    model = create_unet(model_cfg, out_channels=len(names) + 1)
    load_unet_weights(model, result.out_dir / "model.pt")
    version = f"demo-{short_sha(result.out_dir / 'model.pt')}"
    prepared = load_volumes(
        data, sources, class_values=values, other_labels="background", progress=False
    )
    records = []
    for src, vol in zip(sources, prepared, strict=True):
        assert src.label is not None and src.id is not None
        mask = result.out_dir / "predictions" / f"{vol.id}_pred.nii.gz"
        gt = write_class_ground_truth(src.label, values, out / f"{src.id}_gt.nii.gz")
        conf = class_confidence(model, vol.image, len(names) + 1)[1:]
        present = [n for n, c in zip(names, conf, strict=True) if np.isfinite(c)]
        scores = {n: float(c) for n, c in zip(names, conf, strict=True) if np.isfinite(c)}
        dice = dice_by_id.get(vol.id)
        records.append(
            PredictionRecord(
                case_key=f"volume:{src.id}",
                kind="volume",
                model=MODEL_NAME,
                model_version=version,
                site=cfg.site,
                label=", ".join(present) if present else "none",
                scores=scores,
                uncertainty=1.0 - float(np.mean(list(scores.values()))) if scores else 1.0,
                artifacts={
                    "image": artifact_ref(src.image, out),
                    "mask": artifact_ref(mask, out),
                    "ground_truth": artifact_ref(gt, out),
                    "labels": {str(v): n for n, v in cfg.classes.items()},
                    "dice": {n: finite_or_none(dice.get(n)) for n in names} if dice else None,
                    "modality": "CT",
                },
                model_card=model_card(cfg, len(sources)).to_json(),
            )
        )
        log.info("volume %s: Dice %s", src.id, {n: dice.get(n) for n in names} if dice else None)
    return write_predictions(out / "predictions.jsonl", records)


def model_card(cfg: VolumeDemoConfig, n_volumes: int) -> ModelCard:
    """The card of the demo's quick segmentation UNet: a research / demonstration model."""
    return ModelCard(
        display_name="Quick 2D UNet organ segmentation (demo)",
        trained_on=(
            f"up to {cfg.train_slices} labelled axial slices of {n_volumes} demo CT volume(s) "
            f"({', '.join(cfg.classes)}), {cfg.steps} steps; predicted on the same volume(s)"
        ),
        intended_use=(
            "Demonstrates the volume segmentation pipeline and the review workflow; not "
            "validated on any patient cohort."
        ),
        research_only=True,
        uncertainty=(
            "1 - the mean, over the predicted structures, of the mean softmax probability of "
            "the voxels predicted as each structure"
        ),
    )


def _labelled_slices(sources: list[VolumeSource], values: list[int]) -> int:
    """Axial slices holding any of ``values`` over all label maps, minus one per volume (so
    each volume keeps at least one held-out slice for its Dice when asked for all of them)."""
    total = 0
    for src in sources:
        assert src.label is not None
        img: Any = nib.load(src.label)
        arr = np.asarray(img.dataobj)
        hit = np.isin(arr, values).reshape(-1, arr.shape[-1]).any(axis=0)
        total += max(1, int(hit.sum()) - 1)
    return total
