"""Scoring bags with a trained aggregator, and the bag / instance metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medcl.mil.data import Bag, collate_bags


@dataclass
class BagPredictions:
    """Predictions for a list of bags, in their order.

    Attributes:
        bag_ids: the bag ids.
        bag_scores: ``(B,)`` positive-class probability (``p(class 1)`` for two classes,
            ``1 - p(class 0)`` for more).
        bag_probs: ``(B, C)`` class probabilities.
        instance_scores: per bag ``(N_i,)``: instance probabilities for instance-classifier
            models (``ins``, ``max``, ``mean``), attention for attention models (``abmil``,
            ``transmil``).
        attention: per bag ``(N_i,)`` attention, or ``None`` for models without attention.
    """

    bag_ids: list[str]
    bag_scores: np.ndarray
    bag_probs: np.ndarray
    instance_scores: list[np.ndarray]
    attention: list[np.ndarray] | None


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict_bags(model: nn.Module, bags: Sequence[Bag], batch_size: int = 1) -> BagPredictions:
    """Run ``model`` (in eval mode, on its own device) over ``bags`` in batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = _device(model)
    probs: list[np.ndarray] = []
    inst: list[np.ndarray] = []
    attn: list[np.ndarray] = []
    has_attention = False
    try:
        for start in range(0, len(bags), batch_size):
            chunk = bags[start : start + batch_size]
            batch = collate_bags(chunk).to(device)
            out = model(batch.features, batch.mask)
            probs.append(torch.softmax(out.logits.float(), dim=-1).cpu().numpy())
            for i, bag in enumerate(chunk):
                n = len(bag)
                if out.attention is not None:
                    has_attention = True
                    attn.append(out.attention[i, :n].float().cpu().numpy())
                scores = out.instance_scores if out.instance_scores is not None else out.attention
                if scores is None:
                    inst.append(np.zeros(n, dtype=np.float32))
                else:
                    inst.append(scores[i, :n].float().cpu().numpy())
    finally:
        model.train(was_training)
    n_classes = int(getattr(model, "n_classes", 2))
    bag_probs = np.concatenate(probs) if probs else np.zeros((0, n_classes), dtype=np.float32)
    bag_scores = 1.0 - bag_probs[:, 0] if len(bag_probs) else np.zeros(0, dtype=np.float32)
    return BagPredictions(
        [b.bag_id for b in bags], bag_scores, bag_probs, inst, attn if has_attention else None
    )


def bag_auc(labels: np.ndarray, scores: np.ndarray, probs: np.ndarray) -> float:
    """Bag ROC AUC: binary on ``scores``, one-vs-rest on ``probs`` for more classes.

    NaN when a class (of the binary task) or any class (of the multi-class task) is missing.
    """
    from sklearn.metrics import roc_auc_score

    n_classes = probs.shape[1] if probs.ndim == 2 else 2
    present = np.unique(labels)
    if n_classes == 2:
        return float(roc_auc_score(labels, scores)) if len(present) == 2 else math.nan
    if len(present) < n_classes:
        return math.nan
    return float(roc_auc_score(labels, probs, multi_class="ovr"))


def mil_metrics(bags: Sequence[Bag], preds: BagPredictions) -> dict[str, float]:
    """Bag ``auc``, ``balanced_accuracy``, ``accuracy`` and ``instance_auc``.

    ``instance_auc`` scores ``preds.instance_scores`` against the instance labels ``>= 0`` of the
    bags (any label > 0 is positive); NaN without instance labels of both kinds.

    Raises:
        ValueError: ``preds`` is not for ``bags`` (other ids or order).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if [b.bag_id for b in bags] != list(preds.bag_ids):
        raise ValueError("predictions do not belong to these bags (bag ids differ)")
    labels = np.array([b.label for b in bags], dtype=np.int64)
    out: dict[str, float] = {"n_bags": float(len(bags))}
    if len(bags) == 0:
        empty = ("auc", "balanced_accuracy", "accuracy", "instance_auc")
        return {**out, **dict.fromkeys(empty, math.nan)}
    predicted = preds.bag_probs.argmax(axis=1)
    out["auc"] = bag_auc(labels, preds.bag_scores, preds.bag_probs)
    out["balanced_accuracy"] = float(balanced_accuracy_score(labels, predicted))
    out["accuracy"] = float((labels == predicted).mean())
    y: list[np.ndarray] = []
    s: list[np.ndarray] = []
    for bag, scores in zip(bags, preds.instance_scores, strict=True):
        if bag.instance_labels is None:
            continue
        lab = bag.instance_labels.cpu().numpy()
        known = lab >= 0
        y.append((lab[known] > 0).astype(np.int64))
        s.append(np.asarray(scores)[known])
    y_all = np.concatenate(y) if y else np.zeros(0, dtype=np.int64)
    both = len(np.unique(y_all)) == 2
    out["instance_auc"] = float(roc_auc_score(y_all, np.concatenate(s))) if both else math.nan
    return out
