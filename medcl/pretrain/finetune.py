"""``medcl finetune seg``: train a segmentation UNet from N labelled volumes or N labelled slices.

Starts from pretrained weights (``init: <pretrained.pt>``, encoder and/or decoder) or from a random
initialisation (``init: random``, the baseline) through the same code. Trains with Dice + cross
entropy (MONAI ``DiceCELoss``) on augmented slices, then predicts every held-out volume, reports
Dice and HD95 per structure on the input's own voxel grid and saves each predicted mask as NIfTI
with the input's affine.

How long to train is decided by data, not by a step count alone (``early_stopping``): with
validation volumes (``data.val``) the mean validation Dice is measured every ``every`` steps, the
best weights are kept and training stops after ``patience`` checks without improvement (Chaitanya
et al. keep the weights with the best validation Dice, checked every 50 iterations); without
them it stops when a moving average of the training loss has stopped falling (a plateau rule).
``train.max_steps`` is the budget: the same for every method of a comparison.

When a test volume is also a training volume (the "N labelled slices of a volume" protocol), the
slices used for training are left out of its Dice.

Output folder: ``<workspace>/finetune_seg/<name>/`` with ``config.yaml``, ``train/`` (step
checkpoints, ``metrics.csv``), ``model.pt`` (with the classes and the preprocessing, so
``medcl eval seg`` can apply it to any folder), ``dice.csv``, ``scores.csv`` (Dice and HD95 per
volume and structure), ``validation.csv``, ``metrics.json``, ``classes.json`` and
``predictions/<id>_pred.nii.gz``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
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
from medcl.metrics import dice_per_class, segmentation_scores
from medcl.models.unet import UNet, UNetConfig, create_unet, default_volume_unet
from medcl.pretrain.predict import predict_probabilities
from medcl.pretrain.slices import (
    LabelledSliceDataset,
    PreparedVolume,
    map_labels,
    restore_prediction,
    restore_probabilities,
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
    val: list[VolumeSource] = Field(default_factory=list)
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


class EarlyStoppingConfig(StrictModel):
    """When to stop: validation Dice with ``data.val``, else a training-loss plateau."""

    every: int = Field(default=50, ge=1, description="steps between checks")
    patience: int = Field(
        default=0, ge=0, description="checks without improvement before stopping; 0: never stop"
    )
    min_delta: float = Field(default=0.0, ge=0, description="smallest change that counts")
    min_steps: int = Field(
        default=0,
        ge=0,
        description="never stop before this step (a slow start, e.g. from random init, is not a "
        "plateau); checks before it still count towards the best weights",
    )
    loss_ema: float = Field(
        default=0.9, ge=0, lt=1, description="moving-average factor of the plateau rule's loss"
    )


class FinetuneSegConfig(StrictModel):
    """Everything ``medcl finetune seg`` needs."""

    name: str = "finetune"
    data: FinetuneDataConfig = Field(default_factory=FinetuneDataConfig)
    model: UNetConfig = Field(default_factory=default_volume_unet)
    init: str = "random"
    init_parts: list[Literal["encoder", "decoder"]] = Field(
        default_factory=lambda: ["encoder", "decoder"]  # type: ignore[arg-type]
    )
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=8, ge=1)
    augment: bool = True
    crop_scale: tuple[float, float] | None = Field(
        default=(0.8, 1.0), description="crop-and-resize side fractions of the augmentation"
    )
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    channels_last: bool = Field(
        default=True,
        description="train in channels-last memory layout (the same model, other rounding; "
        "faster convolutions on CPU: benchmarks/finetune_step.py)",
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
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
    class_hd95: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    best_step: int | None = None


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
    """Dice + cross entropy of a batch ``{"image": (B, 1, H, W), "label": (B, 1, H, W)}``."""

    def __init__(self, *, channels_last: bool = False) -> None:
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        image = batch["image"].contiguous(memory_format=self.memory_format)
        return self.loss(model(image), batch["label"]), {}


@torch.no_grad()
def predict_volume(model: UNet, vol: PreparedVolume, *, batch_size: int = 16) -> np.ndarray:
    """Class indices ``(Z, H, W)`` for every slice of ``vol``."""
    return predict_probabilities(model, vol, batch_size=batch_size).argmax(1).astype(np.int64)


def _transform(cfg: FinetuneSegConfig, modality: str) -> Any:
    if not cfg.augment:
        return None
    from monai.transforms import Compose

    return Compose(
        [
            geometric_transform(
                2,
                cfg.data.size,
                keys=("image", "label"),
                elastic_prob=0.2,
                crop_scale=cfg.crop_scale,
            ),
            intensity_transform("ct" if modality == "ct" else "mr", key="image", prob=0.5),
        ]
    )


def validation_dice(model: UNet, volumes: list[PreparedVolume], num_classes: int) -> float:
    """Mean over volumes of the mean foreground Dice, on the prepared (training) grid."""
    scores = []
    for vol in volumes:
        assert vol.label is not None
        pred = predict_volume(model, vol)
        dice = dice_per_class(pred, vol.label, num_classes)
        if np.isfinite(dice).any():
            scores.append(float(np.nanmean(dice)))
    return float(np.mean(scores)) if scores else math.nan


class EarlyStopping:
    """The ``on_step`` hook of :class:`~medcl.engine.trainer.Trainer` for fine-tuning.

    With validation volumes it keeps the weights of the best validation Dice (in memory and in
    ``best.pt``); without, it watches a moving average of the training loss. Its history is
    written to ``validation.csv`` and read back when a killed run resumes.
    """

    def __init__(
        self,
        cfg: EarlyStoppingConfig,
        model: UNet,
        val_volumes: list[PreparedVolume],
        num_classes: int,
        out_dir: Path,
        *,
        write: bool,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.val = val_volumes
        self.num_classes = num_classes
        self.path = out_dir / "validation.csv"
        self.best_path = out_dir / "best.pt"
        self.write = write
        self.history: list[tuple[int, float, float]] = []  # step, score, train loss
        self.best = -math.inf
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0
        self._ema: float | None = None
        if self.path.is_file():
            self._reload()

    @property
    def mode(self) -> str:
        return "validation Dice" if self.val else "training-loss plateau"

    def _reload(self) -> None:
        with self.path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                self._record(int(row["step"]), float(row["score"]), float(row["train_loss"]))
        if self.val and self.best_path.is_file():
            self.best_state = torch.load(self.best_path, map_location="cpu", weights_only=True)

    def _record(self, step: int, score: float, loss: float) -> bool:
        self.history.append((step, score, loss))
        improved = math.isfinite(score) and score > self.best + self.cfg.min_delta
        if improved:
            self.best, self.best_step, self.bad = score, step, 0
        else:
            self.bad += 1
        return improved

    def __call__(self, step: int, last_loss: float) -> bool:
        if step % self.cfg.every:
            return False
        if self.val:
            score = validation_dice(self.model, self.val, self.num_classes)
        else:
            ema = self._ema
            self._ema = (
                last_loss
                if ema is None
                else self.cfg.loss_ema * ema + (1 - self.cfg.loss_ema) * last_loss
            )
            score = -self._ema  # higher is better
        if self._record(step, score, last_loss) and self.val:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.write:
                tmp = self.best_path.with_name("best.pt.tmp")
                torch.save(self.best_state, tmp)
                tmp.replace(self.best_path)
        if self.write:
            with self.path.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["step", "score", "train_loss"])
                writer.writerows(self.history)
        log.debug(
            "step %d: %s %.4f (best %.4f at %s)", step, self.mode, score, self.best, self.best_step
        )
        return (
            self.cfg.patience > 0 and self.bad >= self.cfg.patience and step >= self.cfg.min_steps
        )

    def restore_best(self) -> None:
        """Load the best validation weights into the model (no-op without validation)."""
        if self.val and self.best_state is not None:
            self.model.load_state_dict(self.best_state)


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
            # the same seed, the same augmentations (workers are reseeded by worker_init_fn)
            dataset.set_random_state(cfg.train.seed + info.rank)
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
            model = create_unet(model_cfg)
            provenance: dict[str, Any] = {"init": "random"}
            if cfg.init != "random":
                provenance = load_unet_weights(model, Path(cfg.init), cfg.init_parts)
                log.info("initialised %s from %s", cfg.init_parts, cfg.init)
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
            val_vols = load_volumes(
                d,
                d.val,
                data_root=root,
                class_values=values,
                other_labels=d.other_labels,
                progress=False,
            )
            stopper = EarlyStopping(
                cfg.early_stopping,
                model,
                val_vols,
                num_classes,
                out_dir,
                write=info.is_main,
            )
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            steps = cfg.train.max_steps or 1
            scheduler = (
                torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                if cfg.lr_schedule == "cosine"
                else None
            )
            summary = Trainer(
                model,
                optimizer,
                _SegStep(channels_last=cfg.channels_last),
                loader,
                cfg.train,
                out_dir / "train",
                scheduler=scheduler,
                dist_info=info,
                config=cfg.model_dump(mode="json"),
                arch="unet2d",
                on_step=stopper,
            ).fit()
            model.to("cpu")
            stopper.restore_best()
            log.info(
                "trained %d steps (%s; best step %s)", summary.step, stopper.mode, stopper.best_step
            )
            if not info.is_main:
                return FinetuneResult(out_dir, math.nan, {}, [])
            names = list(d.classes)
            save_unet_weights(
                model,
                out_dir / "model.pt",
                {
                    "classes": d.classes,
                    "init": provenance,
                    "preprocessing": preprocessing_meta(d, modality),
                    "steps": summary.step,
                    "best_step": stopper.best_step,
                },
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
            class_hd95 = {n: _nanmean([r[f"{n}_hd95"] for r in per_volume]) for n in names}
            mean = float(np.nanmean(list(class_dice.values())))
            metrics = {
                "mean_dice": mean,
                "class_dice": class_dice,
                "class_hd95": class_hd95,
                "volumes": per_volume,
                "train_slices": [(train_vols[v].id, z) for v, z in slices],
                "init": provenance,
                "steps": summary.step,
                "best_step": stopper.best_step,
                "stopping": stopper.mode,
                "inplane": sorted({str(v.meta.get("inplane")) for v in train_vols}),
            }
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
            with (out_dir / "dice.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["volume", "class", "dice"])
                writer.writerows((v, c, dice) for v, c, dice, _ in rows)
            with (out_dir / "scores.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["volume", "class", "dice", "hd95"])
                writer.writerows(rows)
            log.info("mean Dice %.4f over %d test volumes", mean, len(per_volume))
            return FinetuneResult(
                out_dir,
                mean,
                class_dice,
                [(train_vols[v].id, z) for v, z in slices],
                class_hd95=class_hd95,
                steps=summary.step,
                best_step=stopper.best_step,
            )
    finally:
        cleanup()


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def preprocessing_meta(d: SliceDataConfig, modality: str) -> dict[str, Any]:
    """What a saved model needs to prepare new volumes the way it was trained."""
    return {
        "size": list(d.size),
        "inplane": d.inplane.model_dump(mode="json"),
        "ct_window": list(d.ct_window),
        "mr_percentiles": list(d.mr_percentiles),
        "modality": modality,
    }


def _evaluate(
    cfg: FinetuneSegConfig,
    model: UNet,
    root: Path | None,
    values: list[int],
    names: list[str],
    used: set[tuple[str, int]],
    out_dir: Path,
) -> tuple[list[tuple[str, str, float, float]], list[dict[str, Any]]]:
    d = cfg.data
    rows: list[tuple[str, str, float, float]] = []
    per_volume: list[dict[str, Any]] = []
    for vol in load_volumes(
        d, d.test, data_root=root, class_values=values, other_labels=d.other_labels, progress=False
    ):
        probs = predict_probabilities(model, vol)
        held_out = np.ones(vol.depth, dtype=bool)
        for path, z in used:
            if path == vol.path:
                held_out[z] = False
        if not held_out.any():
            log.warning("%s: every slice was used for training; no Dice", vol.id)
            continue
        pred_orig = restore_probabilities(probs, vol)
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
        mask_stack = np.broadcast_to(held_out[:, None, None], probs[:, 0].shape).astype(np.int64)
        mask = restore_prediction(mask_stack, vol).astype(bool) if not held_out.all() else None
        spacing = nib.affines.voxel_sizes(vol.affine)
        scores = segmentation_scores(
            pred_orig, target, dict(zip(names, values, strict=True)), spacing, mask=mask
        )
        entry: dict[str, Any] = {"volume": vol.id, "held_out_slices": int(held_out.sum())}
        for name in names:
            entry[name] = scores[name]["dice"]
            entry[f"{name}_hd95"] = scores[name]["hd95"]
            rows.append((vol.id, name, scores[name]["dice"], scores[name]["hd95"]))
        per_volume.append(entry)
        if cfg.save_predictions:
            lut = np.array([0, *values], dtype=np.int32)
            (out_dir / "predictions").mkdir(exist_ok=True)
            nib.save(
                nib.Nifti1Image(lut[pred_orig].astype(np.int16), vol.affine),
                out_dir / "predictions" / f"{vol.id}_pred.nii.gz",
            )
    return rows, per_volume
