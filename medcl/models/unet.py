"""A 2D/3D UNet from MONAI blocks, with taps for global and local contrastive pretraining.

Chaitanya et al., "Contrastive learning of global and local features for medical image
segmentation with limited annotations", NeurIPS 2020. Their recipe, which this model serves:

1. pretrain the encoder ``e`` with a global loss on ``g1(e(x))`` (:meth:`UNet.forward_global`);
2. freeze ``e`` (:meth:`UNet.freeze_encoder`), pretrain the first ``l`` decoder blocks with a local
   loss on ``h1(d_l(e(x)))`` (:meth:`UNet.forward_local`);
3. fine-tune everything on the few labelled images (:meth:`UNet.forward`), starting from a
   checkpoint loaded with :meth:`UNet.load_pretrained`.

Layout (``L = len(channels)`` levels, ``L - 1`` poolings): encoder level 0 is two 3x3
conv-norm-ReLU at full size; level ``i`` max-pools by 2 then applies two convs to ``channels[i]``;
the last level is the bottleneck. Decoder block ``j = 1..L-1`` up-samples (transposed conv) to
``channels[L-1-j]``, concatenates the matching encoder skip and applies two convs. State-dict
keys start with ``encoder.``, ``decoder.blocks.<j-1>.``, ``seg_head.``, ``global_head.``,
``local_heads.<j>.`` so parts can be saved and loaded separately.

Input sizes must be multiples of ``2 ** (L - 1)`` (we raise a ValueError naming the multiple
rather than pad silently: crop or pad in the transforms, where labels move too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from monai.networks.blocks import Convolution, UpSample
from pydantic import field_validator
from torch import nn

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.models.heads import LocalProjectionHead, ProjectionHead
from medcl.registry import Registry

logger = logging.getLogger(__name__)

PARTS = ("encoder", "decoder", "seg_head", "global_head", "local_heads")
ARCH_KEYS = ("spatial_dims", "channels", "in_channels", "norm")


class CheckpointMismatchError(InvalidInputError):
    """A checkpoint was saved from a model of another architecture."""


class UNetConfig(StrictModel):
    """Architecture of a :class:`UNet`.

    Attributes:
        spatial_dims: 2 (slices, the paper's setting) or 3 (patches).
        in_channels: image channels.
        out_channels: segmentation classes (background included).
        channels: features per level, last = bottleneck; paper-like (16, 32, 64, 128, 256).
        norm: "batch" or "instance" (affine) normalisation after every convolution.
        global_hidden_dim, global_dim: sizes of the global projection head g1.
        local_hidden_dim, local_dim: channels of the local projection head h1 (1x1 convs).
    """

    spatial_dims: Literal[2, 3] = 2
    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: Literal["batch", "instance"] = "batch"
    global_hidden_dim: int = 1024
    global_dim: int = 128
    local_hidden_dim: int = 128
    local_dim: int = 128

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) < 2 or min(value) < 1:
            raise ValueError("need at least 2 levels of positive channel counts")
        return value

    @field_validator(
        "in_channels",
        "out_channels",
        "global_hidden_dim",
        "global_dim",
        "local_hidden_dim",
        "local_dim",
    )
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value


def _two_conv(dims: int, cin: int, cout: int, norm: str) -> nn.Sequential:
    norm_spec: tuple[str, dict[str, Any]] = (
        ("batch", {}) if norm == "batch" else ("instance", {"affine": True})
    )
    return nn.Sequential(
        Convolution(dims, cin, cout, kernel_size=3, act="relu", norm=norm_spec),
        Convolution(dims, cout, cout, kernel_size=3, act="relu", norm=norm_spec),
    )


class UNetEncoder(nn.Module):
    """Encoder ``e``: returns every level's features, last = bottleneck.

    Shape: input ``(B, in_channels, *S)``; level ``i`` output ``(B, channels[i], *S / 2**i)``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        pool = nn.MaxPool2d if cfg.spatial_dims == 2 else nn.MaxPool3d
        levels: list[nn.Module] = [
            _two_conv(cfg.spatial_dims, cfg.in_channels, cfg.channels[0], cfg.norm)
        ]
        for cin, cout in zip(cfg.channels[:-1], cfg.channels[1:], strict=True):
            levels.append(nn.Sequential(pool(2), _two_conv(cfg.spatial_dims, cin, cout, cfg.norm)))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Decoder block: up-sample by 2 to ``skip_channels``, concatenate the skip, two convs.

    Shape: ``x (B, in_channels, *s)``, ``skip (B, skip_channels, *2s)``
    -> ``(B, skip_channels, *2s)``.
    """

    def __init__(self, dims: int, in_channels: int, skip_channels: int, norm: str) -> None:
        super().__init__()
        self.up = UpSample(dims, in_channels, skip_channels, scale_factor=2, mode="deconv")
        self.conv = _two_conv(dims, 2 * skip_channels, skip_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(torch.cat([self.up(x), skip], dim=1))
        return out


class UNetDecoder(nn.Module):
    """Decoder ``d``: ``L - 1`` :class:`UpBlock` s, block 1 acting on the bottleneck."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.blocks = nn.ModuleList(
            UpBlock(cfg.spatial_dims, ch[i], ch[i - 1], cfg.norm) for i in range(len(ch) - 1, 0, -1)
        )

    def forward(self, feats: Sequence[torch.Tensor], depth: int | None = None) -> torch.Tensor:
        """Output of decoder block ``depth`` (all blocks when None), given the encoder features."""
        depth = len(self.blocks) if depth is None else depth
        x = feats[-1]
        for j, block in enumerate(self.blocks[:depth]):
            x = block(x, feats[-2 - j])
        return x


class UNet(nn.Module):
    """UNet (2D or 3D) with taps for contrastive pretraining.

    Args:
        cfg: the architecture (:class:`UNetConfig`).

    Shapes (``S`` = spatial size, each a multiple of ``2 ** (L - 1)``, ``L = len(channels)``):
        - :meth:`encode`: ``(B, in_channels, *S)`` -> list of ``(B, channels[i], *S / 2**i)``
        - :meth:`forward_global`: ``(B, in_channels, *S)`` -> ``(B, global_dim)``
        - :meth:`forward_local` (depth ``l``): -> ``(B, local_dim, *S / 2**(L - 1 - l))``
        - :meth:`forward`: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)`` logits
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims, ch = cfg.spatial_dims, cfg.channels
        self.encoder = UNetEncoder(cfg)
        self.decoder = UNetDecoder(cfg)
        self.seg_head = Convolution(dims, ch[0], cfg.out_channels, kernel_size=1, conv_only=True)
        self.global_head = ProjectionHead(ch[-1], cfg.global_hidden_dim, cfg.global_dim)
        self.local_heads = nn.ModuleDict(
            {
                str(j): LocalProjectionHead(dims, ch[-1 - j], cfg.local_hidden_dim, cfg.local_dim)
                for j in range(1, len(ch))
            }
        )
        self._encoder_frozen = False

    @property
    def arch(self) -> dict[str, Any]:
        """What a checkpoint must agree on for encoder/decoder weights to fit."""
        return {
            "spatial_dims": self.cfg.spatial_dims,
            "channels": list(self.cfg.channels),
            "in_channels": self.cfg.in_channels,
            "norm": self.cfg.norm,
        }

    @property
    def num_decoder_blocks(self) -> int:
        return len(self.cfg.channels) - 1

    def _check_input(self, x: torch.Tensor) -> None:
        dims = self.cfg.spatial_dims
        if x.ndim != dims + 2 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected input (B, {self.cfg.in_channels}, {dims} spatial dims), "
                f"got {tuple(x.shape)}"
            )
        multiple = 2**self.num_decoder_blocks
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} must be a multiple of {multiple} "
                f"(2**{self.num_decoder_blocks} for {len(self.cfg.channels)} levels); "
                "crop or pad the image first"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every level, last = bottleneck."""
        self._check_input(x)
        feats: list[torch.Tensor] = self.encoder(x)
        return feats

    def forward_global(self, x: torch.Tensor) -> torch.Tensor:
        """``g1(pool(e(x)))``: the global contrastive embedding, ``(B, global_dim)``."""
        bottleneck = self.encode(x)[-1]
        out: torch.Tensor = self.global_head(bottleneck.flatten(2).mean(dim=2))
        return out

    def decode(self, x: torch.Tensor, decoder_depth: int | None = None) -> torch.Tensor:
        """Decoder feature map after ``decoder_depth`` up-blocks (all when None), no head."""
        if decoder_depth is not None and not 1 <= decoder_depth <= self.num_decoder_blocks:
            raise ValueError(
                f"decoder_depth must be in 1..{self.num_decoder_blocks}, got {decoder_depth}"
            )
        out: torch.Tensor = self.decoder(self.encode(x), decoder_depth)
        return out

    def forward_local(self, x: torch.Tensor, decoder_depth: int) -> torch.Tensor:
        """``h1(d_l(e(x)))`` for ``l = decoder_depth``: ``(B, local_dim, *S / 2**(L-1-l))``."""
        feats = self.decode(x, decoder_depth)
        out: torch.Tensor = self.local_heads[str(decoder_depth)](feats)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, *S)``."""
        out: torch.Tensor = self.seg_head(self.decode(x))
        return out

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def decoder_parameters(self, depth: int | None = None) -> Iterator[nn.Parameter]:
        """Parameters of the first ``depth`` decoder blocks (all when None)."""
        blocks = self.decoder.blocks if depth is None else self.decoder.blocks[:depth]
        return blocks.parameters()

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or restart) training the encoder: no gradients, norm statistics held (eval)."""
        self._encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    def checkpoint(self) -> dict[str, Any]:
        """``{"arch": ..., "state_dict": ...}``, the format :meth:`load_pretrained` checks."""
        return {"arch": self.arch, "state_dict": self.state_dict()}

    def load_pretrained(
        self,
        state: Mapping[str, Any],
        parts: Sequence[str] = ("encoder", "decoder"),
        *,
        source: str = "<checkpoint>",
    ) -> list[str]:
        """Load the weights of ``parts`` from a checkpoint; return the keys loaded.

        Args:
            state: :meth:`checkpoint` output, or a plain state dict (no arch check then);
                a DDP ``module.`` prefix is stripped.
            parts: which of ``encoder``, ``decoder``, ``seg_head``, ``global_head``,
                ``local_heads`` to load; the rest keep their values.
            source: the checkpoint's file name, for error messages.

        Raises:
            CheckpointMismatchError: the saved arch differs, or keys of ``parts`` are missing or
                have other shapes (the message lists them).
        """
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
        saved_arch = state.get("arch") if "state_dict" in state else None
        weights: Mapping[str, Any] = state.get("state_dict", state)
        weights = {k.removeprefix("module."): v for k, v in weights.items()}
        problems: list[str] = []
        if isinstance(saved_arch, Mapping):
            for key in ARCH_KEYS:
                if key in saved_arch and _norm(saved_arch[key]) != _norm(self.arch[key]):
                    problems.append(f"{key} {saved_arch[key]} in checkpoint vs {self.arch[key]}")
        own = {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in parts}
        missing = [k for k in own if k not in weights]
        shapes = [
            f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in weights and tuple(weights[k].shape) != tuple(v.shape)
        ]
        if missing:
            problems.append(f"{len(missing)} key(s) missing (e.g. {', '.join(missing[:3])})")
        if shapes:
            problems.append(f"{len(shapes)} parameter shape(s) differ ({'; '.join(shapes[:3])})")
        if problems:
            raise CheckpointMismatchError(
                source, "checkpoint from another architecture: " + "; ".join(problems)
            )
        self.load_state_dict({k: weights[k] for k in own}, strict=False)
        logger.info("loaded %d tensors of %s from %s", len(own), ", ".join(parts), source)
        return list(own)


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def default_volume_unet() -> UNetConfig:
    """The UNet ``medcl pretrain volume`` and ``medcl finetune seg`` build by default.

    Defined once: fine-tuning starts from pretrained weights, so both jobs must agree on the
    architecture. Four levels (16, 32, 64, 128), global head 256 hidden, local head 64 channels,
    batch norm, 2D.
    """
    return UNetConfig(channels=(16, 32, 64, 128), global_hidden_dim=256, local_hidden_dim=64)


UNETS: Registry[UNet] = Registry("unet")


@UNETS.register("unet2d")
def unet2d(**overrides: Any) -> UNet:
    """Paper-like 2D UNet on slices: channels (16, 32, 64, 128, 256), batch norm."""
    return UNet(UNetConfig.model_validate({"spatial_dims": 2, **overrides}))


@UNETS.register("unet3d")
def unet3d(**overrides: Any) -> UNet:
    """3D UNet on patches (sides multiples of 16): channels (16, ..., 256), instance norm."""
    return UNet(UNetConfig.model_validate({"spatial_dims": 3, "norm": "instance", **overrides}))


def create_unet(name_or_cfg: str | UNetConfig | Mapping[str, Any], **overrides: Any) -> UNet:
    """Build a UNet from a preset name (``"unet2d"``, ``"unet3d"``), a config or a mapping.

    The one way jobs build UNets (as timm's ``create_model``); ``overrides`` replace fields of
    the preset or config (e.g. ``out_channels`` for the classes of a fine-tuning run).
    """
    if isinstance(name_or_cfg, str):
        return UNETS.create(name_or_cfg, **overrides)
    data = name_or_cfg.model_dump() if isinstance(name_or_cfg, UNetConfig) else dict(name_or_cfg)
    return UNet(UNetConfig.model_validate({**data, **overrides}))


def list_unets() -> list[str]:
    """Names of the registered UNet presets."""
    return UNETS.names()
