"""Training the INS instance classifier as the paper and its reference code do.

Qu et al., "Rethinking Multiple Instance Learning for Whole Slide Image Classification: A Good
Instance Classifier is All You Need" (reference code: github.com/miccaiif/INS), with PiCO's
partial-label rules (:mod:`medcl.losses.ins`). Training runs over *instances*, not bags: the
instances of every training bag are shuffled together into mini-batches of
``INSOptions.batch_size``. Per step:

1. the query network (instance embedding -> classifier, and -> projection head) scores the
   batch; the key network (a momentum copy, ``key_momentum``) embeds a second view;
2. the prototypes are updated from the queries with the classifier's pseudo-labels;
3. after the warm-up, each instance's stored confidence moves towards the class of its nearest
   prototype (among its candidates) with coefficient ``phi`` (0.95 -> 0.8 over training);
4. loss = partial-label cross-entropy against the confidences + ``contrast_weight`` x the
   instance contrast (MoCo in the warm-up, SupCon on pseudo-labels afterwards);
5. the keys and their pseudo-labels enter the queue.

During the ``warmup_epochs`` a bag pass follows each instance epoch: the bag's class
probabilities are the mean of its instance probabilities, and their cross-entropy with the bag
label (weight ``bag_loss_weight``) trains the classifier. After the warm-up no bag loss is used.

The schedule is fixed (``epochs``, SGD as the reference) and the model of the **last epoch** is
kept: the reference selects nothing on validation data, and neither do we (validation bag /
instance AUC and the pseudo-label accuracy are logged per epoch only).

Named deviations from the reference code:

* frozen features have no image augmentation: the two views of an instance are two dropout
  masks (query network and key network in training mode), where the paper augments images (as
  the end-to-end path does, :mod:`medcl.mil.ins_e2e`);
* the reference's CAMELYON16 loader builds the post-warm-up candidate sets and the forced
  negatives from the *true patch labels*; we use only bag labels (the MIL setting of the paper);
* the reference's warm-up instance epochs see only positive-bag instances (confidence 1/2
  each); ours see every training instance with its initial confidence (negative-bag instances
  are class 0; ``warmup_instances="all"``, the default). ``"positive_bags"`` is the reference's
  rule, kept as an option: on the synthetic task of ``tests/mil/test_train.py`` it leaves the
  classifier at chance after the warm-up (test bag AUC 0.45 against > 0.9 with ``"all"``);
  on HAM10000 bags (about 94% negative instances) neither rule escapes the all-negative
  pseudo-labels (``pseudo_label_acc`` in ``curves/``, see the README);
* the queue starts empty instead of with random vectors, and the warm-up bag score is the mean
  of instance probabilities (the reference's warm-up bag head averages encoder features).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medcl.config import StrictModel
from medcl.losses.ins import (
    INSContrastiveLoss,
    PartialLabelLoss,
    candidate_sets,
    classifier_pseudo_labels,
    confidence_momentum,
    initial_confidence,
    prototype_pseudo_labels,
    update_confidence,
    update_prototypes,
)
from medcl.mil.data import Bag, collate_bags
from medcl.mil.instance import InstanceAggregator
from medcl.mil.predict import bag_auc, mil_metrics, predict_bags

log = logging.getLogger(__name__)


class INSOptions(StrictModel):
    """INS training (defaults: the reference's end-to-end CAMELYON16 run, ``shell_cam.sh``)."""

    epochs: int = Field(default=40, ge=1, description="fixed schedule; the last epoch is kept")
    warmup_epochs: int = Field(default=1, ge=0, description="reference prot_start")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(default=1e-3, ge=0)
    batch_size: int = Field(default=64, ge=2, description="instances per step")
    bag_loss_weight: float = Field(default=0.5, ge=0, description="warm-up bag loss (wl)")
    contrast_weight: float = Field(default=0.5, ge=0)
    temperature: float = Field(default=0.07, gt=0)
    prototype_momentum: float = Field(default=0.9, ge=0, lt=1)
    confidence_momentum: tuple[float, float] = (0.95, 0.8)
    key_momentum: float = Field(default=0.999, ge=0, le=1)
    queue_size: int = Field(default=8192, ge=0)
    warmup_instances: Literal["all", "positive_bags"] = Field(
        default="all",
        description="instances of the warm-up epochs: all, or positive bags only (reference)",
    )
    log_train_accuracy: bool = Field(
        default=True, description="score every train instance after each epoch (a diagnostic)"
    )


@dataclass
class InstanceTable:
    """The training instances of every bag, flattened.

    Attributes:
        features: ``(M, D)``.
        bag_index: ``(M,)`` index of the instance's bag in the training list.
        candidates: ``(M, C)`` 0/1 candidate classes (from the bag label).
        true_labels: ``(M,)`` instance labels, ``-1`` where unknown (diagnostics only).
    """

    features: Tensor
    bag_index: Tensor
    candidates: Tensor
    true_labels: Tensor


def instance_table(bags: Sequence[Bag], n_classes: int) -> InstanceTable:
    """Flatten ``bags`` into an :class:`InstanceTable`."""
    feats = torch.cat([b.features.to(torch.float32) for b in bags], dim=0)
    sizes = torch.tensor([len(b) for b in bags], dtype=torch.int64)
    bag_index = torch.repeat_interleave(torch.arange(len(bags)), sizes)
    bag_labels = torch.tensor([b.label for b in bags], dtype=torch.int64)[bag_index]
    true = torch.cat(
        [
            b.instance_labels.to(torch.int64)
            if b.instance_labels is not None
            else torch.full((len(b),), -1, dtype=torch.int64)
            for b in bags
        ]
    )
    return InstanceTable(feats, bag_index, candidate_sets(bag_labels, n_classes), true)


class INSState:
    """What INS keeps besides the network: confidences, prototypes, key network, queue."""

    def __init__(
        self, model: InstanceAggregator, table: InstanceTable, opts: INSOptions, proj_dim: int
    ) -> None:
        n_classes = table.candidates.shape[1]
        self.confidence = initial_confidence(table.candidates)
        self.prototypes = torch.zeros(n_classes, proj_dim)
        self.key = copy.deepcopy(model)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.queue = torch.zeros(0, proj_dim)
        self.queue_labels = torch.zeros(0, dtype=torch.int64)
        self.opts = opts

    @torch.no_grad()
    def momentum_update_key(self, model: InstanceAggregator) -> None:
        """``key <- m key + (1 - m) query`` for every parameter (buffers copied)."""
        m = self.opts.key_momentum
        for pk, pq in zip(self.key.parameters(), model.parameters(), strict=True):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
        for bk, bq in zip(self.key.buffers(), model.buffers(), strict=True):
            bk.copy_(bq)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Put ``keys (B, E)`` and their labels at the front; keep the ``queue_size`` newest."""
        size = self.opts.queue_size
        self.queue = torch.cat([keys.detach(), self.queue])[:size]
        self.queue_labels = torch.cat([labels.detach(), self.queue_labels])[:size]

    def state_dict(self) -> dict[str, object]:
        """Tensors and key-network weights, for checkpoints."""
        return {
            "confidence": self.confidence,
            "prototypes": self.prototypes,
            "queue": self.queue,
            "queue_labels": self.queue_labels,
            "key": self.key.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` saved."""
        for name in ("confidence", "prototypes", "queue", "queue_labels"):
            value = state[name]
            assert isinstance(value, Tensor)
            setattr(self, name, value.clone())
        key_state = state["key"]
        assert isinstance(key_state, dict)
        self.key.load_state_dict(key_state)


def _project(model: InstanceAggregator, h: Tensor) -> Tensor:
    assert model.projector is not None
    return F.normalize(model.projector(h), dim=-1)


def ins_instance_step(
    model: InstanceAggregator,
    state: INSState,
    x: Tensor,
    index: Tensor,
    candidates: Tensor,
    *,
    warm: bool,
    phi: float,
    contrast: INSContrastiveLoss,
    x_key: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of one instance mini-batch; updates ``state`` (prototypes, confidence, queue).

    Args:
        x: ``(B, D)`` instance features (the query view); ``index``: ``(B,)`` their rows in the
            instance table; ``candidates``: ``(B, C)`` their candidate sets.
        warm: a warm-up step (initial confidences, MoCo contrast) or not.
        phi: the confidence moving-average coefficient of this epoch.
        x_key: the key view (another augmentation of the same instances); ``x`` by default.
    """
    h = model.embed(x)
    logits = model.classifier(h)
    q = _project(model, h)
    cls_label = classifier_pseudo_labels(logits.detach(), candidates)
    protos_before = state.prototypes.clone()
    state.prototypes = update_prototypes(
        state.prototypes, q.detach(), cls_label, state.opts.prototype_momentum
    )
    with torch.no_grad():
        state.momentum_update_key(model)
        k = _project(state.key, state.key.embed(x if x_key is None else x_key))
    if not warm:
        proto_label = prototype_pseudo_labels(q.detach(), protos_before, candidates)
        state.confidence[index] = update_confidence(state.confidence[index], proto_label, phi)
    cls_loss = PartialLabelLoss()(logits, state.confidence[index])
    if warm:
        con = contrast(q, k, state.queue)
    else:
        con = contrast(q, k, state.queue, cls_label, state.queue_labels)
    state.enqueue(k, cls_label)
    loss = cls_loss + state.opts.contrast_weight * con
    return loss, {"ins_loss": float(cls_loss.item()), "contrast_loss": float(con.item())}


def _bag_pass(
    model: InstanceAggregator,
    bags: Sequence[Bag],
    opt: torch.optim.Optimizer,
    weight: float,
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    """One warm-up epoch of the bag loss (bag probability = mean instance probability)."""
    total, steps = 0.0, 0
    order = rng.permutation(len(bags))
    for i in range(0, len(order), batch_size):
        batch = collate_bags([bags[j] for j in order[i : i + batch_size]]).to(device)
        h = model.embed(batch.features)
        probs = torch.softmax(model.classifier(h), dim=-1) * batch.mask.unsqueeze(-1)
        mean = probs.sum(dim=1) / batch.mask.sum(dim=1, keepdim=True).clamp_min(1)
        loss = weight * F.nll_loss(mean.clamp_min(1e-12).log(), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.item())
        steps += 1
    return total / max(steps, 1)


def pseudo_label_accuracy(confidence: Tensor, table: InstanceTable) -> float:
    """Accuracy of ``argmax(confidence)`` on positive-bag instances with a known label.

    A diagnostic against the true instance labels (never used in training); NaN without any.
    """
    known = (table.true_labels >= 0) & (table.candidates[:, 1:].sum(dim=1) > 0)
    if not known.any():
        return math.nan
    bag_class = table.candidates[known, 1:].argmax(dim=1) + 1
    truth = torch.where(table.true_labels[known] > 0, bag_class, torch.zeros_like(bag_class))
    return float((confidence[known].argmax(dim=1) == truth).float().mean())


def make_optimizer(model: torch.nn.Module, opts: INSOptions) -> torch.optim.Optimizer:
    """SGD with momentum (the reference) or AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
        )
    return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)


def fit_ins(
    model: InstanceAggregator,
    train: Sequence[Bag],
    val: Sequence[Bag] | None,
    opts: INSOptions,
    *,
    n_classes: int,
    seed: int,
    bag_batch_size: int = 1,
    device: torch.device | None = None,
    views: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    diagnose_train: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` (an ``ins`` aggregator) in place for ``opts.epochs``; the per-epoch log.

    ``views`` maps a batch of instances to its query and key views (image augmentations in the
    end-to-end path, :mod:`medcl.mil.ins_e2e`); without it both views are the instance itself.
    ``diagnose_train=False`` skips scoring every training instance after each epoch (the
    ``classifier_acc`` column; costly with an image encoder).

    Each row: the mean losses, ``pseudo_label_acc`` and ``classifier_acc`` (train instances of
    positive bags against their true labels, when known), ``val_auc``, ``val_instance_auc``.
    """
    if model.projector is None:
        raise ValueError("INS needs an instance aggregator with a projection head (proj_dim > 0)")
    device = device or torch.device("cpu")
    model.to(device)
    table = instance_table(train, n_classes)
    proj_dim = int(model.projector[-1].out_features)  # type: ignore[index]
    state = INSState(model, table, opts, proj_dim)
    opt = make_optimizer(model, opts)
    contrast = INSContrastiveLoss(opts.temperature)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    for epoch in range(opts.epochs):
        warm = epoch < opts.warmup_epochs
        phi = confidence_momentum(epoch, opts.epochs, *opts.confidence_momentum)
        model.train()
        state.key.train()
        sums: dict[str, float] = {}
        steps = 0
        order = torch.from_numpy(rng.permutation(len(table.features)))
        if warm and opts.warmup_instances == "positive_bags":
            order = order[table.candidates[order, 1:].sum(dim=1) > 0]
        for i in range(0, len(order), opts.batch_size):
            idx = order[i : i + opts.batch_size]
            if len(idx) < 2:
                continue
            x, cand = table.features[idx].to(device), table.candidates[idx].to(device)
            x_key = None
            if views is not None:
                x, x_key = views(x)
            loss, parts = ins_instance_step(
                model, state, x, idx, cand, warm=warm, phi=phi, contrast=contrast, x_key=x_key
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            for key, value in {"train_loss": float(loss.item()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
        row: dict[str, float] = {"epoch": float(epoch), "phi": phi, "warm": float(warm)}
        row.update({k: v / max(steps, 1) for k, v in sums.items()})
        if warm and opts.bag_loss_weight > 0:
            row["bag_loss"] = _bag_pass(
                model, train, opt, opts.bag_loss_weight, bag_batch_size, rng, device
            )
        row["pseudo_label_acc"] = pseudo_label_accuracy(state.confidence, table)
        diagnose = diagnose_train and opts.log_train_accuracy
        row.update(_diagnostics(model, train if diagnose else [], val, table))
        history.append(row)
        log.info("ins epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
    model.eval()
    return history


@torch.no_grad()
def _diagnostics(
    model: InstanceAggregator,
    train: Sequence[Bag],
    val: Sequence[Bag] | None,
    table: InstanceTable,
) -> dict[str, float]:
    """Classifier accuracy on the train instances' true labels and the validation AUCs (logged)."""
    out: dict[str, float] = {"classifier_acc": math.nan}
    known = (table.true_labels >= 0) & (table.candidates[:, 1:].sum(dim=1) > 0)
    if train and known.any():
        preds = predict_bags(model, train, batch_size=8)
        scores = torch.from_numpy(np.concatenate(preds.instance_scores))
        truth = table.true_labels[known] > 0
        out["classifier_acc"] = float(((scores[known] >= 0.5) == truth).float().mean())
    if val:
        vp = predict_bags(model, val, batch_size=8)
        labels = np.array([b.label for b in val], dtype=np.int64)
        out["val_auc"] = bag_auc(labels, vp.bag_scores, vp.bag_probs)
        out["val_instance_auc"] = mil_metrics(val, vp)["instance_auc"]
    return out
