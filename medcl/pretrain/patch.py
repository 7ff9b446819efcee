"""``medcl pretrain patch``: SimCLR (NT-Xent) or SupCon pretraining of a registry encoder.

Images come from a labelled image set (manifest, HAM10000, Camelyon17-WILDS, class folders; the
train part of a group-aware split, so probing on the test part never sees a pretraining image)
or from the tissue tiles of a slide read on the fly. Training runs on the shared engine (DDP with
torchrun, AMP on GPU, checkpoints, exact resume). The result ``encoder.pt`` loads with
``create_encoder("medcl:<path>")``.

Output folder: ``<workspace>/pretrain_patch/<name>/`` with ``config.yaml``, ``train/`` (step
checkpoints, ``metrics.csv``) and ``encoder.pt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from medcl.config import StrictModel, save_config
from medcl.engine.data import shuffled_loader
from medcl.engine.distributed import cleanup, init_distributed
from medcl.engine.seed import seed_everything
from medcl.engine.trainer import Metrics, TrainConfig, Trainer
from medcl.errors import ConfigError
from medcl.io.image_selection import (
    ImageViewsDataset,
    PatchDataConfig,
    load_filtered_image_set,
    split_image_set,
)
from medcl.losses.registry import create_loss, list_losses, loss_inputs
from medcl.models.encoder_base import Encoder
from medcl.models.encoder_weights import save_encoder
from medcl.models.encoders import create_encoder
from medcl.models.heads import ProjectionHead
from medcl.pretrain.patch_data import SlideTilesDataset, collate_views
from medcl.transforms.patch_views import TwoCropTransform, dermoscopy_views, pathology_views
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)


_EMBEDDING_INPUTS = ("pair", "views")


class PatchPretrainConfig(StrictModel):
    """Everything ``medcl pretrain patch`` needs."""

    name: str = "patch"
    data: PatchDataConfig = Field(default_factory=PatchDataConfig)
    source: Literal["images", "slide"] = "images"
    encoder: str = "timm:resnet18"
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict)
    views: Literal["dermoscopy", "pathology"] = "dermoscopy"
    view_kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(default=112, ge=16)
    loss: str = Field(
        default="ntxent",
        description="a registered loss on embeddings (medcl.losses.registry): ntxent or supcon",
    )
    temperature: float = Field(default=0.2, gt=0)
    gather_distributed: bool = False
    loss_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="further options of the loss, e.g. base_temperature"
    )
    projection_hidden: int = Field(default=512, ge=1)
    projection_dim: int = Field(default=128, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=200))
    out_dir: Path | None = None

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value: str) -> str:
        if value not in list_losses():
            raise ValueError(f"unknown loss '{value}'; valid names: {', '.join(list_losses())}")
        if loss_inputs(value) not in _EMBEDDING_INPUTS:
            raise ValueError(
                f"loss '{value}' takes {loss_inputs(value).replace('_', ' ')}, not the embeddings "
                f"of views; patch pretraining takes one of: {', '.join(embedding_losses())}"
            )
        return value


def embedding_losses() -> list[str]:
    """Registered losses patch pretraining can train with (they take view embeddings)."""
    return [n for n in list_losses() if loss_inputs(n) in _EMBEDDING_INPUTS]


def build_patch_loss(cfg: PatchPretrainConfig) -> nn.Module:
    """The loss of ``cfg``, built by name through the loss registry."""
    return create_loss(
        cfg.loss,
        temperature=cfg.temperature,
        gather_distributed=cfg.gather_distributed,
        **cfg.loss_kwargs,
    )


class ContrastiveModel(nn.Module):
    """Encoder + MLP projection head.

    Shape:
        - x: ``(B, 3, H, W)``
        - output: ``(B, projection_dim)``
    """

    def __init__(self, encoder: Encoder, hidden: int, out: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x))
        return out


class _ViewsStep:
    """Both views in one forward pass, then the loss: on the pair ``(z1, z2)`` (NT-Xent) or on
    the stacked views with the labels (SupCon), as the loss's ``inputs`` says."""

    def __init__(self, loss: nn.Module) -> None:
        self.loss = loss
        self.supervised = getattr(loss, "inputs", "pair") == "views"

    def __call__(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        v1, v2, labels = batch
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)
        if self.supervised:
            return self.loss(torch.stack([z1, z2], dim=1), labels), {}
        return self.loss(z1, z2), {}


@dataclass(frozen=True)
class PatchPretrainResult:
    """Where the encoder was written and the last loss."""

    out_dir: Path
    encoder: Path
    last_loss: float
    num_images: int


def _dataset(
    cfg: PatchPretrainConfig, root: Path | None, norm: dict[str, Any]
) -> ImageViewsDataset | SlideTilesDataset:
    """The training views, normalised with ``norm`` (the encoder's mean and std)."""
    enc_views = pathology_views if cfg.views == "pathology" else dermoscopy_views
    two = TwoCropTransform(enc_views(cfg.image_size, **{**norm, **cfg.view_kwargs}))
    if cfg.source == "slide":
        if loss_inputs(cfg.loss) == "views":
            raise ConfigError("loss", cfg.loss, "slide tiles have no labels; use ntxent")
        if cfg.data.path is None:
            raise ConfigError("data", "path", "no slide given")
        path = (
            cfg.data.path if cfg.data.path.is_absolute() or root is None else root / cfg.data.path
        )
        return SlideTilesDataset(path, cfg.data.slide, two)
    full = load_filtered_image_set(cfg.data, root)
    ds = split_image_set(full, cfg.data)[0] if cfg.data.use == "train" else full
    log.info("pretraining on %d images (%s part of the split)", len(ds), cfg.data.use)
    return ImageViewsDataset(ds, two)


def run_pretrain_patch(
    cfg: PatchPretrainConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> PatchPretrainResult:
    """Train, then write ``encoder.pt``; resumes from the last step checkpoint."""
    info = init_distributed(cfg.train.device)
    try:
        out_dir = job_dir(cfg.out_dir, workspace, "pretrain_patch", cfg.name)
        if info.is_main:
            save_config(cfg, out_dir)
        seed_everything(cfg.train.seed)
        root = data_root or resolve_data_root()
        torch.manual_seed(cfg.train.seed)
        encoder = create_encoder(cfg.encoder, **cfg.encoder_kwargs)
        # the views are normalised as the encoder's weights expect (e.g. mean 0.5 for Lite0)
        dataset = _dataset(cfg, root, {"mean": encoder.spec.mean, "std": encoder.spec.std})
        if len(dataset) < cfg.batch_size:
            raise ConfigError(
                "batch_size", str(cfg.batch_size), f"larger than the {len(dataset)} images"
            )
        model = ContrastiveModel(encoder, cfg.projection_hidden, cfg.projection_dim)
        loss = build_patch_loss(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.train.max_steps or 1
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.1
        )
        summary = Trainer(
            model,
            optimizer,
            _ViewsStep(loss),
            shuffled_loader(
                dataset,
                batch_size=cfg.batch_size,
                num_workers=cfg.data.num_workers,
                seed=cfg.train.seed,
                info=info,
                collate_fn=collate_views,
            ),
            cfg.train,
            out_dir / "train",
            scheduler=scheduler,
            dist_info=info,
            # runs from before loss_kwargs existed recorded none: leaving it out while empty
            # keeps their checkpoints resumable
            config=cfg.model_dump(
                mode="json", exclude=set() if cfg.loss_kwargs else {"loss_kwargs"}
            ),
            arch=cfg.encoder,
        ).fit()
        path = out_dir / "encoder.pt"
        if info.is_main:
            # the encoder saw image_size crops: evaluate it at that size
            size = (cfg.image_size, cfg.image_size)
            encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
            save_encoder(
                model.encoder.cpu(),
                path,
                {
                    "job": "pretrain_patch",
                    "loss": cfg.loss,
                    "steps": summary.step,
                    "last_loss": summary.last_loss,
                    "name": cfg.name,
                },
            )
        return PatchPretrainResult(out_dir, path, summary.last_loss, len(dataset))
    finally:
        cleanup()
