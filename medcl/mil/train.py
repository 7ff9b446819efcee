"""Training MIL aggregators on bags: :func:`fit_mil`, with INS instance losses for ``ins``.

Bag aggregators (``mean``, ``max``, ``abmil``, ``transmil``): per step ``batch_size`` bags padded
together and the class-weighted bag cross-entropy; AdamW; early stopping on the validation loss
or AUC with ``patience``, the best epoch's weights kept.

``ins`` is trained as the INS paper (:mod:`medcl.mil.ins_train`): over instance mini-batches
with PiCO confidences, prototypes and the instance contrast, the bag loss in the warm-up only,
for the fixed schedule ``cfg.ins`` (epochs, SGD); **the last epoch is kept** (no selection on
validation data; ``monitor`` and ``patience`` do not apply, validation metrics are logged).

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
from medcl.mil.aggregators import MILAggregator, create_aggregator
from medcl.mil.checkpoint import load_mil_model, save_mil_model
from medcl.mil.data import Bag, collate_bags, infer_n_classes
from medcl.mil.folds import CVResult, FoldResult, cross_validate, patient_folds
from medcl.mil.ins_train import INSOptions, fit_ins
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
    ckpt_every: int = Field(
        default=0,
        ge=0,
        description="`medcl mil train`: step checkpoints every N steps (0: per epoch)",
    )
    folds: int = Field(default=5, ge=1, description="CV folds by patient; 1: one train/val split")
    val_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="bags (by patient) held out for early stopping"
    )
    ins: INSOptions = Field(
        default_factory=INSOptions,
        description="aggregator 'ins': its own fixed schedule (epochs, lr, ...); see ins_train",
    )
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
    if isinstance(model, InstanceAggregator) and model.projector is not None:
        rows = fit_ins(
            model, train, val, cfg.ins, n_classes=n_classes, seed=cfg.seed,
            bag_batch_size=cfg.batch_size, device=device,
        )  # fmt: skip
        return FitResult(model, rows, len(rows) - 1, weights.cpu().tolist())
    history: list[dict[str, float]] = []
    best_value, best_epoch, best_state, stale = -math.inf, 0, None, 0
    show = cfg.progress and sys.stderr.isatty()
    bar = tqdm(range(cfg.epochs), desc=f"mil {cfg.aggregator}", disable=not show, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        order = rng.permutation(len(train))
        steps = 0
        for i in range(0, len(order), cfg.batch_size):
            batch = collate_bags([train[j] for j in order[i : i + cfg.batch_size]]).to(device)
            out = model(batch.features, batch.mask)
            loss = F.cross_entropy(out.logits, batch.labels, weight=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            loss_sum += loss.detach()  # one .item() per epoch, not per step
        mean_loss = float(loss_sum) / max(steps, 1)
        row: dict[str, float] = {"epoch": float(epoch), "train_loss": mean_loss}
        row["bag_loss"] = mean_loss
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
