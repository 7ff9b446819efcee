"""Training MIL aggregators on bags: :func:`fit_mil`, with INS instance losses for ``ins``.

Per step (``batch_size`` bags padded together): the class-weighted bag cross-entropy; for the
``ins`` aggregator also the INS instance losses (Qu et al. 2023, :mod:`medcl.losses.ins`):
pseudo-labels from the bag labels, the instance scores and momentum prototypes (only the top
instance of positive bags during ``warmup_epochs``), an instance cross-entropy weighted by
``ins_weight`` and an instance supervised contrastive loss weighted by ``contrast_weight``.
AdamW; early stopping on the validation loss or AUC with ``patience``, best weights kept.

Scoring, metrics, checkpoints and cross-validation are re-exported here:
:func:`predict_bags`, :func:`mil_metrics`, :func:`save_mil_model`, :func:`load_mil_model`,
:func:`cross_validate`.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from tqdm.auto import tqdm

from medcl.config import StrictModel
from medcl.engine.distributed import resolve_device
from medcl.engine.seed import seed_everything
from medcl.losses.ins import (
    InstanceClassificationLoss,
    InstanceContrastiveLoss,
    ins_pseudo_labels,
    update_prototypes,
)
from medcl.mil.aggregators import MILAggregator, create_aggregator
from medcl.mil.checkpoint import load_mil_model, save_mil_model
from medcl.mil.data import Bag, BagBatch, collate_bags, infer_n_classes
from medcl.mil.folds import CVResult, FoldResult, cross_validate, patient_folds
from medcl.mil.instance import InstanceAggregator
from medcl.mil.predict import BagPredictions, bag_auc, mil_metrics, predict_bags

log = logging.getLogger(__name__)

__all__ = [
    "BagPredictions",
    "CVResult",
    "FitResult",
    "FoldResult",
    "MILTrainConfig",
    "class_weights",
    "cross_validate",
    "fit_mil",
    "load_mil_model",
    "mil_metrics",
    "patient_folds",
    "predict_bags",
    "save_mil_model",
]


class MILTrainConfig(StrictModel):
    """How to train a MIL aggregator (``configs/mil/train.yaml``)."""

    aggregator: str = "abmil"
    aggregator_kwargs: dict[str, Any] = Field(default_factory=dict)
    class_names: list[str] | None = Field(
        default=None, description="class order (index = label); default: sorted unique labels"
    )
    epochs: int = Field(default=50, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=10, ge=0, description="0: no early stopping")
    monitor: Literal["val_loss", "val_auc"] = "val_loss"
    batch_size: int = Field(default=1, ge=1)
    class_weighting: bool = True
    seed: int = 0
    device: str = "auto"
    folds: int = Field(default=5, ge=1, description="CV folds by patient; 1: one train/val split")
    val_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="bags (by patient) held out for early stopping"
    )
    # INS options (aggregator "ins")
    ins_weight: float = Field(default=1.0, ge=0, description="instance cross-entropy weight")
    contrast_weight: float = Field(default=0.5, ge=0, description="instance contrast weight")
    contrast_temperature: float = Field(default=0.1, gt=0)
    contrast_max_instances: int = Field(default=512, ge=0)
    prototype_momentum: float = Field(default=0.9, ge=0, lt=1)
    pseudo_label_threshold: float = Field(default=0.5, ge=0, le=1)
    warmup_epochs: int = Field(default=2, ge=0, description="epochs without prototype labels")
    progress: bool = True


@dataclass
class FitResult:
    """A trained model (best epoch's weights), the per-epoch history and the best epoch."""

    model: MILAggregator
    history: list[dict[str, float]]
    best_epoch: int
    class_weights: list[float] = field(default_factory=list)


def class_weights(labels: Sequence[int], n_classes: int) -> Tensor:
    """``n / (C_present * count_c)`` per class (1 for absent classes): ``(n_classes,)``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _n_classes(bags: Sequence[Bag], cfg: MILTrainConfig, n_classes: int | None) -> int:
    if n_classes is None:
        n_classes = infer_n_classes(bags, cfg.class_names)
    bad = sorted({b.label for b in bags if not 0 <= b.label < n_classes})
    if bad:
        raise ValueError(f"bag labels {bad} are outside 0..{n_classes - 1}")
    return n_classes


class _INSState:
    """INS losses and prototypes during training."""

    def __init__(self, cfg: MILTrainConfig, n_classes: int) -> None:
        self.cfg = cfg
        self.n_classes = n_classes
        self.prototypes: Tensor | None = None
        self.cls_loss = InstanceClassificationLoss()
        self.con_loss = InstanceContrastiveLoss(
            cfg.contrast_temperature, cfg.contrast_max_instances
        )

    def losses(
        self, model: InstanceAggregator, batch: BagBatch, weights: Tensor, epoch: int
    ) -> tuple[Tensor, dict[str, float]]:
        out = model.forward_instances(batch.features, batch.mask)
        assert out.embeddings is not None
        bag_loss = F.cross_entropy(out.logits, batch.labels, weight=weights)
        warm = epoch < self.cfg.warmup_epochs
        pseudo = ins_pseudo_labels(
            out.instance_scores, batch.mask, batch.labels, out.embeddings, self.prototypes,
            self.cfg.pseudo_label_threshold, mode="top" if warm else "prototype",
        )  # fmt: skip
        if warm:  # every instance of a positive bag counts as positive for the classifier
            inherited = ins_pseudo_labels(
                out.instance_scores, batch.mask, batch.labels, mode="inherit"
            )
            inst = self.cls_loss(out.instance_logits, inherited)
        else:
            inst = self.cls_loss(out.instance_logits, pseudo)
        con = self.con_loss(out.embeddings, pseudo)
        self.prototypes = update_prototypes(
            self.prototypes, out.embeddings.detach(), pseudo, self.n_classes,
            self.cfg.prototype_momentum,
        )  # fmt: skip
        total = bag_loss + self.cfg.ins_weight * inst + self.cfg.contrast_weight * con
        parts = {"bag_loss": bag_loss.item(), "ins_loss": inst.item(), "contrast_loss": con.item()}
        return total, parts


@torch.no_grad()
def _validate(
    model: MILAggregator, bags: Sequence[Bag], weights: Tensor, batch_size: int
) -> dict[str, float]:
    preds = predict_bags(model, bags, batch_size)
    labels = np.array([b.label for b in bags], dtype=np.int64)
    probs = torch.from_numpy(preds.bag_probs).clamp_min(1e-12)
    loss = F.nll_loss(probs.log(), torch.from_numpy(labels), weight=weights.cpu()).item()
    return {"val_loss": loss, "val_auc": bag_auc(labels, preds.bag_scores, preds.bag_probs)}


def _improved(metrics: dict[str, float], best: float, monitor: str) -> tuple[bool, float]:
    """Whether the monitored value beats ``best`` (AUC falls back to the loss when NaN)."""
    value = metrics[monitor]
    if monitor == "val_auc" and not math.isnan(value):
        return value > best, value
    value = -metrics["val_loss"]
    return value > best, value


def fit_mil(
    train: Sequence[Bag],
    val: Sequence[Bag] | None,
    cfg: MILTrainConfig,
    *,
    n_classes: int | None = None,
) -> FitResult:
    """Train ``cfg.aggregator`` on ``train``; early-stop on ``val`` (all epochs without it).

    ``n_classes`` defaults to ``len(cfg.class_names)``, else ``max(label) + 1`` (at least 2).

    Raises:
        ValueError: no training bags, a label outside ``0..n_classes-1``, bad aggregator options.
    """
    if not train:
        raise ValueError("fit_mil needs at least one training bag")
    n_classes = _n_classes([*train, *(val or [])], cfg, n_classes)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    in_dim = int(train[0].features.shape[1])
    model = create_aggregator(cfg.aggregator, in_dim, n_classes, **cfg.aggregator_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = (
        class_weights([b.label for b in train], n_classes)
        if cfg.class_weighting
        else torch.ones(n_classes)
    ).to(device)
    ins = None
    if isinstance(model, InstanceAggregator) and model.projector is not None:
        ins = _INSState(cfg, n_classes)
    history: list[dict[str, float]] = []
    best_value, best_epoch, best_state, stale = -math.inf, 0, None, 0
    show = cfg.progress and sys.stderr.isatty()
    bar = tqdm(range(cfg.epochs), desc=f"mil {cfg.aggregator}", disable=not show, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        order = rng.permutation(len(train))
        steps = 0
        for i in range(0, len(order), cfg.batch_size):
            batch = collate_bags([train[j] for j in order[i : i + cfg.batch_size]]).to(device)
            if ins is not None:
                assert isinstance(model, InstanceAggregator)
                loss, parts = ins.losses(model, batch, weights, epoch)
            else:
                out = model(batch.features, batch.mask)
                loss = F.cross_entropy(out.logits, batch.labels, weight=weights)
                parts = {"bag_loss": loss.item()}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            for key, value in {"train_loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
        row: dict[str, float] = {"epoch": float(epoch)}
        row.update({k: v / max(steps, 1) for k, v in sums.items()})
        if val:
            row.update(_validate(model, val, weights, cfg.batch_size))
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k.endswith(("loss", "auc"))})
        if not val:
            best_epoch = epoch
            continue
        better, value = _improved(row, best_value, cfg.monitor)
        if better:
            best_value, best_epoch, stale = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best_epoch, weights.cpu().tolist())
