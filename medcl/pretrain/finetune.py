"""``medcl finetune seg``: train a segmentation UNet from N labelled volumes or N labelled slices.

Starts from pretrained weights (``init: <pretrained.pt>``, encoder and/or decoder) or from a random
initialisation (``init: random``, the baseline) through the same code. Trains with Dice + cross
entropy (MONAI ``DiceCELoss``), then predicts every held-out volume, reports Dice per class on the
input's own voxel grid and saves each predicted mask as NIfTI with the input's affine.

When a test volume is also a training volume (the "N labelled slices of a volume" protocol), the
slices used for training are left out of its Dice.

Output folder: ``<workspace>/finetune_seg/<name>/`` with ``config.yaml``, ``train/`` (step
checkpoints, ``metrics.csv``), ``model.pt``, ``dice.csv``, ``metrics.json``, ``classes.json`` and
``predictions/<id>_pred.nii.gz``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from medcl.config import StrictModel, save_config
from medcl.engine.distributed import cleanup, init_distributed
from medcl.engine.seed import seed_everything, worker_init_fn
from medcl.engine.trainer import Metrics, TrainConfig, Trainer
from medcl.errors import ConfigError
from medcl.io.volumes import read_label, read_volume
from medcl.metrics import dice_per_class
from medcl.models.unet import UNet, UNetConfig
from medcl.pretrain.slices import (
    LabelledSliceDataset,
    PreparedVolume,
    map_labels,
    restore_prediction,
)
from medcl.pretrain.volume_data import SliceDataConfig, VolumeSource, load_volumes, resolve_path
from medcl.pretrain.weights import load_unet_weights, save_unet_weights
from medcl.transforms import plain_tensors
from medcl.transforms.views import geometric_transform, intensity_transform
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)


class FinetuneDataConfig(SliceDataConfig):
    """Labelled volumes to train on and to test on, and the classes to segment."""

    train: list[VolumeSource] = Field(default_factory=list)
    test: list[VolumeSource] = Field(default_factory=list)
    train_slices: int | None = Field(default=None, ge=1)
    classes: dict[str, int] = Field(default_factory=dict)
    other_labels: Literal["error", "background"] = "error"

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: dict[str, int]) -> dict[str, int]:
        if any(v <= 0 for v in value.values()):
            raise ValueError("class label values must be positive (0 is background)")
        if len(set(value.values())) != len(value):
            raise ValueError("two classes share a label value")
        return value


def _finetune_unet() -> UNetConfig:
    return UNetConfig(channels=(16, 32, 64, 128), global_hidden_dim=256, local_hidden_dim=64)


class FinetuneSegConfig(StrictModel):
    """Everything ``medcl finetune seg`` needs."""

    name: str = "finetune"
    data: FinetuneDataConfig = Field(default_factory=FinetuneDataConfig)
    model: UNetConfig = Field(default_factory=_finetune_unet)
    init: str = "random"
    init_parts: list[Literal["encoder", "decoder"]] = Field(
        default_factory=lambda: ["encoder", "decoder"]  # type: ignore[arg-type]
    )
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=8, ge=1)
    augment: bool = True
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=300))
    save_predictions: bool = True
    out_dir: Path | None = None


@dataclass(frozen=True)
class FinetuneResult:
    """Mean Dice over test volumes and classes, per-class means, and where outputs went."""

    out_dir: Path
    mean_dice: float
    class_dice: dict[str, float]
    train_slices: list[tuple[str, int]]


def choose_train_slices(volumes: list[PreparedVolume], n: int | None) -> list[tuple[int, int]]:
    """``(volume index, z)`` of the training slices: all, or ``n`` evenly spaced labelled ones.

    Slices holding any labelled class are candidates; ``n`` of them are picked at evenly spaced
    ranks, deterministically (the same slices whatever the seed, so seeds vary only training).
    """
    candidates = []
    for v, vol in enumerate(volumes):
        assert vol.label is not None
        for z in range(vol.depth):
            if n is None or bool(vol.label[z].any()):
                candidates.append((v, z))
    if n is None:
        return candidates
    if n > len(candidates):
        raise ConfigError(
            "data", "train_slices", f"asked for {n} slices but only {len(candidates)} are labelled"
        )
    picks = np.linspace(0, len(candidates) - 1, n + 2)[1:-1].round().astype(int)
    return [candidates[i] for i in picks]


class _SegStep:
    def __init__(self) -> None:
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        return self.loss(model(batch["image"]), batch["label"]), {}


@torch.no_grad()
def predict_volume(model: UNet, vol: PreparedVolume, *, batch_size: int = 16) -> np.ndarray:
    """Class indices ``(Z, H, W)`` for every slice of ``vol``."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, vol.depth, batch_size):
        x = torch.from_numpy(vol.image[start : start + batch_size][:, None]).to(device)
        out.append(model(x).argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


def _transform(cfg: FinetuneSegConfig, modality: str) -> Any:
    if not cfg.augment:
        return None
    from monai.transforms import Compose

    return Compose(
        [
            geometric_transform(2, cfg.data.size, keys=("image", "label"), elastic_prob=0.2),
            intensity_transform("ct" if modality == "ct" else "mr", key="image", prob=0.5),
        ]
    )


def run_finetune_seg(
    cfg: FinetuneSegConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> FinetuneResult:
    """Train, evaluate on ``data.test`` and write predictions; see the module docstring."""
    d = cfg.data
    if not d.classes:
        raise ConfigError("data", "classes", "name at least one class: {name: label value}")
    if not d.train or not d.test:
        raise ConfigError("data", "train" if not d.train else "test", "no volumes given")
    for src in [*d.train, *d.test]:
        if src.label is None:
            raise ConfigError("data", "train/test", f"volume {src.image} has no label")
    num_classes = len(d.classes) + 1
    model_cfg = cfg.model.model_copy(update={"out_channels": num_classes})
    info = init_distributed(cfg.train.device)
    try:
        with plain_tensors():
            out_dir = job_dir(cfg.out_dir, workspace, "finetune_seg", cfg.name)
            if info.is_main:
                save_config(cfg, out_dir)
            seed_everything(cfg.train.seed)
            values = list(d.classes.values())
            root = d.root or data_root or resolve_data_root()
            train_vols = load_volumes(
                d,
                d.train,
                data_root=root,
                class_values=values,
                other_labels=d.other_labels,
                progress=False,
            )
            slices = choose_train_slices(train_vols, d.train_slices)
            log.info("training on %d labelled slices of %d volumes", len(slices), len(train_vols))
            modality = train_vols[0].modality
            dataset = LabelledSliceDataset(train_vols, slices, _transform(cfg, modality))
            generator = torch.Generator().manual_seed(cfg.train.seed + info.rank)
            sampler = RandomSampler(
                dataset, replacement=True, num_samples=cfg.batch_size * 10_000, generator=generator
            )
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                sampler=sampler,
                num_workers=d.num_workers,
                worker_init_fn=worker_init_fn if d.num_workers else None,
            )
            torch.manual_seed(cfg.train.seed)
            model = UNet(model_cfg)
            provenance: dict[str, Any] = {"init": "random"}
            if cfg.init != "random":
                provenance = load_unet_weights(model, Path(cfg.init), cfg.init_parts)
                log.info("initialised %s from %s", cfg.init_parts, cfg.init)
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            steps = cfg.train.max_steps or 1
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            Trainer(
                model,
                optimizer,
                _SegStep(),
                loader,
                cfg.train,
                out_dir / "train",
                scheduler=scheduler,
                dist_info=info,
                config=cfg.model_dump(mode="json"),
                arch="unet2d",
            ).fit()
            model.to("cpu")
            if not info.is_main:
                return FinetuneResult(out_dir, math.nan, {}, [])
            names = list(d.classes)
            save_unet_weights(
                model, out_dir / "model.pt", {"classes": d.classes, "init": provenance}
            )
            (out_dir / "classes.json").write_text(
                json.dumps(
                    {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}}, indent=2
                )
            )
            used = {(train_vols[v].path, z) for v, z in slices}
            rows, per_volume = _evaluate(cfg, model, root, values, names, used, out_dir)
            class_dice = {
                n: float(np.nanmean([r[n] for r in per_volume])) if per_volume else math.nan
                for n in names
            }
            mean = float(np.nanmean(list(class_dice.values())))
            metrics = {
                "mean_dice": mean,
                "class_dice": class_dice,
                "volumes": per_volume,
                "train_slices": [(train_vols[v].id, z) for v, z in slices],
                "init": provenance,
            }
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
            with (out_dir / "dice.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["volume", "class", "dice"])
                writer.writerows(rows)
            log.info("mean Dice %.4f over %d test volumes", mean, len(per_volume))
            return FinetuneResult(
                out_dir, mean, class_dice, [(train_vols[v].id, z) for v, z in slices]
            )
    finally:
        cleanup()


def _evaluate(
    cfg: FinetuneSegConfig,
    model: UNet,
    root: Path | None,
    values: list[int],
    names: list[str],
    used: set[tuple[str, int]],
    out_dir: Path,
) -> tuple[list[tuple[str, str, float]], list[dict[str, Any]]]:
    d = cfg.data
    rows: list[tuple[str, str, float]] = []
    per_volume: list[dict[str, Any]] = []
    for vol in load_volumes(
        d, d.test, data_root=root, class_values=values, other_labels=d.other_labels, progress=False
    ):
        pred = predict_volume(model, vol)
        held_out = np.ones(vol.depth, dtype=bool)
        for path, z in used:
            if path == vol.path:
                held_out[z] = False
        if not held_out.any():
            log.warning("%s: every slice was used for training; no Dice", vol.id)
            continue
        pred_orig = restore_prediction(pred, vol)
        src = next(s for s in d.test if str(resolve_path(s.image, root)) == vol.path)
        image = read_volume(
            resolve_path(src.image, root), frame=src.frame, series_uid=src.series_uid
        )
        assert src.label is not None
        target = map_labels(
            read_label(resolve_path(src.label, root), image).array,
            values,
            other_labels=d.other_labels,
            source=str(src.label),
        )
        mask_stack = np.broadcast_to(held_out[:, None, None], pred.shape).astype(np.int64)
        mask = restore_prediction(mask_stack, vol).astype(bool)
        dice = dice_per_class(pred_orig, target, len(values) + 1, mask=mask)
        entry: dict[str, Any] = {"volume": vol.id, "held_out_slices": int(held_out.sum())}
        for name, value in zip(names, dice, strict=True):
            entry[name] = float(value)
            rows.append((vol.id, name, float(value)))
        per_volume.append(entry)
        if cfg.save_predictions:
            lut = np.array([0, *values], dtype=np.int32)
            (out_dir / "predictions").mkdir(exist_ok=True)
            nib.save(
                nib.Nifti1Image(lut[pred_orig].astype(np.int16), vol.affine),
                out_dir / "predictions" / f"{vol.id}_pred.nii.gz",
            )
    return rows, per_volume
