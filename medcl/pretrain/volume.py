"""``medcl pretrain volume``: global then local contrastive pretraining of a 2D UNet on slices.

Chaitanya et al., NeurIPS 2020. Stage 1 trains the encoder and the global projection head with a
global loss (G^R, G^{D-} or G^D) on batches made of one slice per partition of several volumes.
Stage 2 (optional) freezes the encoder and trains the first ``decoder_depth`` decoder blocks and
the local head with the local loss on intensity-only views. The result, ``pretrained.pt``, is
what ``medcl finetune seg`` starts from; each stage keeps resumable step checkpoints.

Output folder: ``<workspace>/pretrain_volume/<name>/`` with ``config.yaml``, ``global/`` and
``local/`` (step checkpoints, ``metrics.csv``) and ``pretrained.pt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.engine.distributed import DistInfo, cleanup, init_distributed
from medcl.engine.seed import seed_everything, worker_init_fn
from medcl.engine.trainer import Metrics, TrainConfig, Trainer
from medcl.errors import ConfigError
from medcl.losses.local import LOCAL_LOSSES
from medcl.losses.partition import create_global_loss
from medcl.losses.registry import create_local_loss, list_local_losses
from medcl.models.unet import UNet, UNetConfig, create_unet, default_volume_unet
from medcl.pretrain.partitions import PartitionBatchSampler, SliceIndex
from medcl.pretrain.slices import PreparedVolume, SliceViewsDataset
from medcl.pretrain.volume_data import PretrainDataConfig, load_volumes
from medcl.pretrain.weights import save_unet_weights
from medcl.transforms import plain_tensors
from medcl.transforms.views import (
    TwoViews,
    geometric_transform,
    global_view_transform,
    local_view_transform,
)
from medcl.workspace import job_dir

log = logging.getLogger(__name__)


class GlobalStageConfig(StrictModel):
    """Stage 1: encoder + global head with a global contrastive loss."""

    loss: Literal["none", "gr", "gd-", "gd"] = "gd-"
    steps: int = Field(default=200, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(default=0.1, gt=0)
    volumes_per_batch: int = Field(default=4, ge=1)
    crop_scale: tuple[float, float] | None = Field(
        default=(0.7, 1.0),
        description="side fractions of the views' crop-and-resize; null: no crop",
    )


class LocalStageConfig(StrictModel):
    """Stage 2: frozen encoder, first ``decoder_depth`` decoder blocks + local head."""

    enabled: bool = False
    loss: str = Field(
        default="local",
        description="a registered local loss (medcl.losses.registry.LOCAL_LOSSES): local (the "
        "paper's L_local, with `domain`) or dense (the same on patches, no partitions)",
    )
    steps: int = Field(default=200, ge=0)
    decoder_depth: int = Field(default=2, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(default=0.1, gt=0)
    region_size: int = Field(default=3, ge=1)
    num_regions: int = Field(default=13, ge=1)
    domain: bool = False
    chunk_size: int = Field(default=8, ge=1)
    volumes_per_batch: int = Field(default=4, ge=1)

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, value: str) -> str:
        if value not in list_local_losses():
            raise ValueError(
                f"unknown local loss '{value}'; valid names: {', '.join(list_local_losses())}"
            )
        return value

    @model_validator(mode="after")
    def _check_domain(self) -> LocalStageConfig:
        # only the paper's local loss has the domain variant (L^D_local): the registry says
        # which options a loss takes ("bad options for local loss 'dense': ... domain ...")
        if self.domain:
            LOCAL_LOSSES.check_options(self.loss, domain=True)
        return self


def build_local_loss(ls: LocalStageConfig) -> nn.Module:
    """The local stage's loss, built by name through the local-loss registry."""
    options: dict[str, Any] = {
        "region_size": ls.region_size,
        "num_regions": ls.num_regions,
        "temperature": ls.temperature,
        "chunk_size": ls.chunk_size,
    }
    if ls.domain:
        options["domain"] = True
    return create_local_loss(ls.loss, **options)


class VolumePretrainConfig(StrictModel):
    """Everything ``medcl pretrain volume`` needs."""

    name: str = "volume"
    data: PretrainDataConfig = Field(default_factory=PretrainDataConfig)
    model: UNetConfig = Field(default_factory=default_volume_unet)
    partitions: int = Field(default=4, ge=1)
    global_stage: GlobalStageConfig = Field(default_factory=GlobalStageConfig)
    local_stage: LocalStageConfig = Field(default_factory=LocalStageConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: Path | None = None


@dataclass(frozen=True)
class PretrainResult:
    """Where the pretrained weights are, and the last loss of each stage."""

    out_dir: Path
    weights: Path
    global_loss: float | None
    local_loss: float | None


def _views(cfg: VolumePretrainConfig, local: bool) -> dict[str, TwoViews]:
    size = cfg.data.size
    out: dict[str, TwoViews] = {}
    for modality in ("ct", "mr"):
        if local:
            shared = geometric_transform(2, size, keys=("image",), elastic_prob=0.0)
            out[modality] = TwoViews(local_view_transform(modality), shared=shared)
        else:
            view = global_view_transform(
                2, modality, size, keys=("image",), crop_scale=cfg.global_stage.crop_scale
            )
            out[modality] = TwoViews(view)
        out[modality].set_random_state(cfg.train.seed + (17 if local else 0))
    return out


def _loader(
    cfg: VolumePretrainConfig,
    volumes: list[PreparedVolume],
    *,
    volumes_per_batch: int,
    local: bool,
    info: DistInfo,
) -> DataLoader[dict[str, torch.Tensor]]:
    index = SliceIndex([(v.id, v.depth) for v in volumes], S=cfg.partitions)
    dataset = SliceViewsDataset(
        volumes, index.volume, index.slice_idx, index.partition, _views(cfg, local)
    )
    per_batch = min(volumes_per_batch, len(volumes))
    # with few volumes an epoch may hold fewer batches than there are ranks: then every epoch
    # draws one batch of fresh volumes per rank instead
    natural = len(volumes) // per_batch
    sampler = PartitionBatchSampler(
        index,
        volumes_per_batch=per_batch,
        batches_per_epoch=None if natural >= info.world_size else info.world_size,
        S=cfg.partitions,
        seed=cfg.train.seed,
        num_replicas=info.world_size,
        rank=info.rank,
    )
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init_fn if workers else None,
        persistent_workers=workers > 0,
    )


class _Tap(nn.Module):
    """Routes ``forward`` to one of the UNet's taps (DDP synchronises what runs in forward)."""

    def __init__(self, net: UNet, method: str) -> None:
        super().__init__()
        self.net = net
        self.method = method

    def forward(self, *args: Any) -> torch.Tensor:
        out: torch.Tensor = getattr(self.net, self.method)(*args)
        return out


class _GlobalStep:
    """Both views through the encoder + global head in one pass, then the global loss."""

    def __init__(self, loss: nn.Module) -> None:
        self.loss = loss

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        z1, z2 = model(torch.cat([batch["view1"], batch["view2"]])).chunk(2)
        return self.loss(z1, z2, batch["partition"], batch["volume"]), {}


class _LocalStep:
    """Both views through the decoder up to ``depth`` + local head, then the local loss."""

    def __init__(self, loss: nn.Module, depth: int) -> None:
        self.loss = loss
        self.depth = depth
        self.domain = bool(getattr(loss, "domain", False))  # needs partition and volume ids

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Metrics]:
        f1, f2 = model(torch.cat([batch["view1"], batch["view2"]]), self.depth).chunk(2)
        if self.domain:
            return self.loss(f1, f2, batch["partition"], batch["volume"]), {}
        return self.loss(f1, f2), {}


def _stage_config(cfg: VolumePretrainConfig, stage: str) -> dict[str, Any]:
    """The settings a stage's checkpoints record (a run resumes only with the same ones)."""
    exclude: dict[str, Any] = {"name": True, "out_dir": True}
    if stage == "global":
        exclude["local_stage"] = True
    elif cfg.local_stage.loss == "local":
        # runs from before the local loss was selectable recorded no loss name: leaving the
        # default out keeps their checkpoints resumable
        exclude["local_stage"] = {"loss"}
    return cfg.model_dump(mode="json", exclude=exclude)


def _run_stage(
    name: str,
    tap: nn.Module,
    params: list[nn.Parameter],
    step_fn: Any,
    loader: DataLoader[dict[str, torch.Tensor]],
    cfg: VolumePretrainConfig,
    steps: int,
    lr: float,
    weight_decay: float,
    out_dir: Path,
    info: DistInfo,
) -> float:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    train_cfg = cfg.train.model_copy(update={"max_steps": steps})
    trainer = Trainer(
        tap,
        optimizer,
        step_fn,
        loader,
        train_cfg,
        out_dir / name,
        scheduler=scheduler,
        dist_info=info,
        # what this stage's output depends on: the global stage is the same whether or not a
        # local stage follows, so "+ local" runs can resume a finished global stage
        config=_stage_config(cfg, name),
        arch="unet2d",
    )
    # only this stage's parameters train: DDP then tracks exactly the ones that get gradients
    # (the decoder is unused by the global stage, the encoder frozen in the local one)
    trainable = {id(p) for p in params}
    before = [(p, p.requires_grad) for p in tap.parameters()]
    for p, _ in before:
        p.requires_grad_(id(p) in trainable)
    try:
        summary = trainer.fit()
    finally:
        for p, flag in before:
            p.requires_grad_(flag)
    log.info("%s stage: %d steps, last loss %.4f", name, summary.step, summary.last_loss)
    return summary.last_loss


def run_pretrain_volume(
    cfg: VolumePretrainConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> PretrainResult:
    """Run the configured stages and write ``pretrained.pt``; resumes finished/killed stages."""
    if cfg.model.spatial_dims != 2:
        raise ConfigError("model", "spatial_dims", "volume pretraining trains on 2D slices")
    if not cfg.data.volumes:
        raise ConfigError("data", "volumes", "no volumes to pretrain on")
    if cfg.local_stage.enabled and cfg.local_stage.decoder_depth > len(cfg.model.channels) - 1:
        raise ConfigError(
            "local_stage",
            "decoder_depth",
            f"the UNet has {len(cfg.model.channels) - 1} decoder blocks",
        )
    info = init_distributed(cfg.train.device)
    try:
        with plain_tensors():
            out_dir = job_dir(cfg.out_dir, workspace, "pretrain_volume", cfg.name)
            if info.is_main:
                save_config(cfg, out_dir)
            seed_everything(cfg.train.seed)
            volumes = load_volumes(
                cfg.data,
                cfg.data.volumes,
                data_root=data_root,
                with_labels=False,
                progress=info.is_main and cfg.train.progress,
            )
            # partition_of_slices refuses S > depth with the volume's name (a clear error)
            SliceIndex([(v.id, v.depth) for v in volumes], S=cfg.partitions)
            torch.manual_seed(cfg.train.seed)
            model = create_unet(cfg.model)
            g_loss = l_loss = None
            gs = cfg.global_stage
            if gs.loss != "none" and gs.steps > 0:
                loader = _loader(
                    cfg, volumes, volumes_per_batch=gs.volumes_per_batch, local=False, info=info
                )
                params = [*model.encoder_parameters(), *model.global_head.parameters()]
                g_loss = _run_stage(
                    "global",
                    _Tap(model, "forward_global"),
                    params,
                    _GlobalStep(create_global_loss(gs.loss, temperature=gs.temperature)),
                    loader,
                    cfg,
                    gs.steps,
                    gs.lr,
                    gs.weight_decay,
                    out_dir,
                    info,
                )
            ls = cfg.local_stage
            if ls.enabled and ls.steps > 0:
                model.freeze_encoder(True)
                loader = _loader(
                    cfg, volumes, volumes_per_batch=ls.volumes_per_batch, local=True, info=info
                )
                params = [
                    *model.decoder_parameters(ls.decoder_depth),
                    *model.local_heads[str(ls.decoder_depth)].parameters(),
                ]
                loss = build_local_loss(ls)
                l_loss = _run_stage(
                    "local",
                    _Tap(model, "forward_local"),
                    params,
                    _LocalStep(loss, ls.decoder_depth),
                    loader,
                    cfg,
                    ls.steps,
                    ls.lr,
                    ls.weight_decay,
                    out_dir,
                    info,
                )
                model.freeze_encoder(False)
            weights = out_dir / "pretrained.pt"
            if info.is_main:
                method: str = gs.loss if gs.steps > 0 else "none"
                if ls.enabled and ls.steps > 0:
                    # "+local", "+local-domain" (the paper's names), or "+dense"
                    method += "+" + ls.loss + ("-domain" if ls.domain else "")
                save_unet_weights(
                    model,
                    weights,
                    {
                        "method": method,
                        "global_loss": g_loss,
                        "local_loss": l_loss,
                        "name": cfg.name,
                    },
                )
            return PretrainResult(out_dir, weights, g_loss, l_loss)
    finally:
        cleanup()
