"""``medcl retrieval train-cci``: class-conditioned contrastive invariance (CCI) fine-tuning.

The encoder of InvariantSelectPR (Zhou et al., 2024). Start from any registry encoder (a timm or
open_clip vision tower, or a ``medcl:`` patch-pretrained checkpoint), add a small projection head,
optionally train only the last blocks, and train on the labelled pool (source domains) with
:class:`~medcl.losses.cci.CCILoss`: same class positive (cross-domain pairs weighted up) plus
invariance between each image and a domain-perturbed view of it (colour / stain / acquisition
augmentation). Writes ``encoder.pt``, loadable as ``medcl:<path>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from medcl.config import StrictModel, save_config
from medcl.engine.data import shuffled_loader
from medcl.engine.distributed import cleanup, init_distributed
from medcl.engine.seed import seed_everything, worker_init_fn
from medcl.engine.trainer import Metrics, TrainConfig, Trainer
from medcl.io.image_selection import PatchDataConfig, load_filtered_image_set, split_image_set
from medcl.io.images import ImageSet, read_image
from medcl.losses.cci import CCILoss
from medcl.models.encoder_weights import save_encoder
from medcl.models.encoders import create_encoder
from medcl.pretrain.patch import ContrastiveModel
from medcl.transforms.patch_views import dermoscopy_views, pathology_views
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)


class CCITrainConfig(StrictModel):
    """Everything ``medcl retrieval train-cci`` needs."""

    name: str = "cci"
    data: PatchDataConfig = Field(default_factory=PatchDataConfig)
    encoder: str = "timm:resnet18"
    trainable_blocks: int | None = Field(default=None, ge=1)
    views: Literal["dermoscopy", "pathology"] = "dermoscopy"
    view_kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(default=96, ge=16)
    projection_hidden: int = Field(default=512, ge=1)
    projection_dim: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.1, gt=0)
    cross_domain_weight: float = Field(default=2.0, gt=0)
    invariance_weight: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=64, ge=2)
    balanced: bool = Field(
        default=False, description="class-balanced batches (each class drawn equally often)"
    )
    lr: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100))
    out_dir: Path | None = None


class ClassBalancedSampler(Sampler[int]):
    """Indices drawn with replacement, each class equally likely; ``len(labels)`` per epoch.

    Deterministic in ``seed`` and the epoch (``set_epoch``), so a resumed run draws the same
    batches; with several processes each takes every ``world_size``-th index of one sequence.
    """

    def __init__(self, labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels)
        self.weights = 1.0 / counts[self.labels]
        self.weights /= self.weights.sum()
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) // self.world_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        full = rng.choice(len(self.labels), size=len(self) * self.world_size, p=self.weights)
        return iter(full[self.rank :: self.world_size].tolist())


class LabelledViewsDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int, int]]):
    """``(view, perturbed view, class index, domain index)`` for each image of an image set."""

    def __init__(self, ds: ImageSet, view: Any, perturbed: Any) -> None:
        self.paths = [str(p) for p in ds.df["path"]]
        self.labels = ds.labels.astype(np.int64)
        domains = sorted(ds.df["domain"].astype(str).unique())
        self.domain_map = {d: i for i, d in enumerate(domains)}
        self.domains = ds.df["domain"].astype(str).map(self.domain_map).to_numpy(np.int64)
        self.view = view
        self.perturbed = perturbed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        image = read_image(self.paths[i])
        return self.view(image), self.perturbed(image), int(self.labels[i]), int(self.domains[i])


class _CCIStep:
    def __init__(self, loss: CCILoss) -> None:
        self.loss = loss

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Metrics]:
        v1, v2, labels, domains = batch
        z, z_aug = model(torch.cat([v1, v2])).chunk(2)
        loss, terms = self.loss.forward_terms(z, z_aug, labels, domains)
        return loss, {k: v.detach() for k, v in terms.items()}


@dataclass(frozen=True)
class CCIResult:
    """Where the fine-tuned encoder went."""

    out_dir: Path
    encoder: Path
    last_loss: float
    num_images: int
    num_domains: int


def run_train_cci(
    cfg: CCITrainConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> CCIResult:
    """Fine-tune ``cfg.encoder`` with CCI on the train part of the pool; write ``encoder.pt``."""
    info = init_distributed(cfg.train.device)
    try:
        out_dir = job_dir(cfg.out_dir, workspace, "retrieval_cci", cfg.name)
        if info.is_main:
            save_config(cfg, out_dir)
        seed_everything(cfg.train.seed)
        full = load_filtered_image_set(cfg.data, resolve_data_root(data_root))
        pool = split_image_set(full, cfg.data)[0] if cfg.data.use == "train" else full
        torch.manual_seed(cfg.train.seed)
        encoder = create_encoder(cfg.encoder)
        if cfg.trainable_blocks is not None:
            encoder.trainable_blocks(cfg.trainable_blocks)
        size = (cfg.image_size, cfg.image_size)
        encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
        views = pathology_views if cfg.views == "pathology" else dermoscopy_views
        # the views are normalised as the encoder's weights expect (e.g. mean 0.5 for Lite0)
        norm = {"mean": encoder.spec.mean, "std": encoder.spec.std}
        dataset = LabelledViewsDataset(
            pool, encoder.eval_transform, views(cfg.image_size, **{**norm, **cfg.view_kwargs})
        )
        log.info(
            "CCI on %d images, %d classes, %d domains",
            len(dataset),
            len(pool.class_map),
            len(dataset.domain_map),
        )
        loader: Any
        if cfg.balanced:
            sampler = ClassBalancedSampler(
                dataset.labels, cfg.train.seed, info.rank, info.world_size
            )
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=cfg.data.num_workers,
                worker_init_fn=worker_init_fn if cfg.data.num_workers else None,
            )
        else:
            loader = shuffled_loader(
                dataset,
                batch_size=cfg.batch_size,
                num_workers=cfg.data.num_workers,
                seed=cfg.train.seed,
                info=info,
            )
        model = ContrastiveModel(encoder, cfg.projection_hidden, cfg.projection_dim)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss = CCILoss(cfg.temperature, cfg.cross_domain_weight, cfg.invariance_weight)
        summary = Trainer(
            model,
            optimizer,
            _CCIStep(loss),
            loader,
            cfg.train,
            out_dir / "train",
            dist_info=info,
            config=cfg.model_dump(mode="json"),
            arch=cfg.encoder,
        ).fit()
        path = out_dir / "encoder.pt"
        if info.is_main:
            save_encoder(
                model.encoder.cpu(),
                path,
                {
                    "job": "train_cci",
                    "base": cfg.encoder,
                    "steps": summary.step,
                    "last_loss": summary.last_loss,
                    "domains": sorted(dataset.domain_map),
                },
            )
        return CCIResult(out_dir, path, summary.last_loss, len(dataset), len(dataset.domain_map))
    finally:
        cleanup()
