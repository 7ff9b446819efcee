"""The one face every 2D encoder shows: :class:`Encoder`, its :class:`TransformSpec` and transform.

Whatever builds the network (timm, open_clip, MONAI, our own checkpoints), callers get an
:class:`Encoder` with ``embed_dim``, ``forward(x) -> (B, D)``, ``name``, ``spec`` and
``eval_transform``, plus ``freeze`` and ``trainable_blocks`` for fine-tuning only the last blocks.
The preprocessing is read back from the model (timm's data config, open_clip's preprocess config)
into a :class:`TransformSpec`, so features are always computed on the input the weights expect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class TransformSpec:
    """How an encoder's input is prepared at evaluation time.

    The image is resized so that it covers ``size / crop_pct`` (keeping its aspect ratio), centre
    cropped to ``size``, scaled to ``[0, 1]`` and normalised per channel: ``(x - mean) / std``.

    Args:
        mean, std: per-channel (RGB) normalisation, in ``[0, 1]`` units.
        size: ``(height, width)`` of the network input.
        interpolation: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``.
        crop_pct: fraction of the resized image kept by the centre crop (timm's ``crop_pct``).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if len(self.size) != 2 or any(int(s) < 1 for s in self.size):
            raise ValueError(f"size must be (height, width) >= 1, got {self.size}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformSpec:
        """Build from a mapping with keys mean, std, size (int or pair), interpolation, crop_pct."""
        size = data.get("size", 224)
        size_pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        interpolation = str(data.get("interpolation", "bilinear"))
        return cls(
            mean=tuple(float(m) for m in data.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(s) for s in data.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            size=size_pair,  # type: ignore[arg-type]
            interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
            crop_pct=float(data.get("crop_pct", 1.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types (lists, floats, str), for checkpoints and YAML."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def to_float_chw(image: Any) -> torch.Tensor:
    """An RGB image as a float tensor in ``[0, 1]``.

    Parameters
    ----------
    image : PIL image, (H, W[, C]) ndarray, or (C, H, W) tensor
        Integer arrays are scaled by their dtype's maximum; float arrays and tensors are taken to
        be in ``[0, 1]`` already. Grey images are repeated to 3 channels; alpha is dropped.

    Returns
    -------
    (3, H, W) float32 tensor
    """
    if isinstance(image, torch.Tensor):
        t = image.detach().to(torch.float32)
        if t.ndim == 2:
            t = t[None]
    else:
        if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
            image = image.convert("RGB")
        arr = np.asarray(image)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float32)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an (H, W[, C]) image, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got image of shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3].contiguous()


def resized_shape(h: int, w: int, size: tuple[int, int], crop_pct: float = 1.0) -> tuple[int, int]:
    """``(height, width)`` :func:`resize_center_crop` resizes an ``h x w`` image to before its
    centre crop (``(h, w)`` itself when it only crops)."""
    th, tw = size
    scale = max(th / crop_pct / h, tw / crop_pct / w)
    return max(th, round(h * scale)), max(tw, round(w * scale))


def resize_center_crop(
    image: torch.Tensor, size: tuple[int, int], interpolation: str, crop_pct: float = 1.0
) -> torch.Tensor:
    """Resize ``image`` to cover ``size / crop_pct`` (aspect kept), then centre crop to ``size``.

    Parameters
    ----------
    image : (C, H, W) or (B, C, H, W) float tensor
    size : (height, width) of the output

    Returns
    -------
    (C, height, width) or (B, C, height, width) float tensor; a batch gives the same numbers as
    each image on its own
    """
    h, w = image.shape[-2:]
    th, tw = size
    nh, nw = resized_shape(h, w, size, crop_pct)
    if (nh, nw) != (h, w):
        smooth = interpolation != "nearest"
        image = F.interpolate(
            image if image.ndim == 4 else image[None],
            size=(nh, nw),
            mode=interpolation,
            align_corners=False if smooth else None,
            antialias=smooth and (nh < h or nw < w),
        ).view(*image.shape[:-2], nh, nw)
        if interpolation == "bicubic":  # cubic kernels overshoot; stay in the input's range
            image = image.clamp(0.0, 1.0)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return image[..., top : top + th, left : left + tw]


class EvalTransform:
    """Callable ``image -> (3, H, W)`` normalised tensor for one :class:`TransformSpec`.

    A class (not a closure) so it pickles into DataLoader workers.
    """

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
        # (3, 256) float32: what the float path gives each uint8 value of each channel, with the
        # same float32 operations in the same order ((v / 255 - mean) / std), so the table
        # lookup below is bit for bit the float path
        self._unit = np.arange(256, dtype=np.float32) / np.float32(255.0)  # uint8 -> [0, 1]
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None]
        self._table = (self._unit[None, :] - mean) / std

    def __call__(self, image: Any) -> torch.Tensor:
        crop = self._crop_only(image)
        if crop is not None:
            out = np.empty((1, 3, *self.spec.size), dtype=np.float32)
            self._lookup(crop, out[0])
            return torch.from_numpy(out[0])
        t = to_float_chw(image)
        t = resize_center_crop(t, self.spec.size, self.spec.interpolation, self.spec.crop_pct)
        return (t - self._mean) / self._std

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        """``torch.stack([self(im) for im in images])``, made as one ``(B, 3, H, W)`` batch.

        RGB(A) ``uint8`` arrays that need no resizing (tiles cut at the encoder's input size) are
        normalised by a 256-entry table per channel, written straight into the batch (numpy, no
        float image per tile). Equal-shaped ``uint8`` arrays that need resizing are scaled to
        ``[0, 1]`` by a table, then resized and normalised as one batch (a few large torch ops
        instead of several small ones per tile). The numbers are the same either way.
        """
        crops = [self._crop_only(im) for im in images]
        if crops and all(c is not None for c in crops):
            out = np.empty((len(crops), 3, *self.spec.size), dtype=np.float32)
            for k, crop in enumerate(crops):
                assert crop is not None
                self._lookup(crop, out[k])
            return torch.from_numpy(out)
        shapes = {im.shape if isinstance(im, np.ndarray) else None for im in images}
        first = images[0] if len(images) else None
        if (
            len(shapes) == 1
            and isinstance(first, np.ndarray)
            and first.dtype == np.uint8
            and first.ndim == 3
            and first.shape[2] in (3, 4)
        ):
            # the float path's own operations, on the whole batch: uint8 / 255 in float32 (a
            # table of the 256 quotients, written straight in (B, 3, H, W) order), resize and
            # crop, then (x - mean) / std
            h, w = first.shape[:2]
            arr = np.empty((len(images), 3, h, w), dtype=np.float32)
            for k, im in enumerate(images):
                for c in range(3):
                    np.take(self._unit, im[:, :, c], out=arr[k, c], mode="clip")
            t = resize_center_crop(
                torch.from_numpy(arr), self.spec.size, self.spec.interpolation, self.spec.crop_pct
            )
            return ((t - self._mean) / self._std).contiguous()
        return torch.stack([self(im) for im in images])

    def _crop_only(self, image: Any) -> np.ndarray | None:
        """``image`` centre-cropped to ``spec.size`` when it is an ``(H, W, 3|4)`` uint8 array
        that :func:`resize_center_crop` would only crop; else ``None`` (the float path)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            return None
        h, w, c = image.shape
        if c not in (3, 4) or resized_shape(h, w, self.spec.size, self.spec.crop_pct) != (h, w):
            return None
        th, tw = self.spec.size
        top, left = (h - th) // 2, (w - tw) // 2
        return image[top : top + th, left : left + tw]

    def _lookup(self, crop: np.ndarray, out: np.ndarray) -> None:
        """Write the normalised ``(3, H, W)`` float32 of ``crop`` ``(H, W, 3|4)`` into ``out``."""
        for c in range(3):
            np.take(self._table[c], crop[:, :, c], out=out[c], mode="clip")

    def __repr__(self) -> str:
        return f"EvalTransform({self.spec})"


class Encoder(nn.Module):
    """A 2D image encoder: ``(B, 3, H, W) -> (B, embed_dim)``, whatever library built it.

    Args:
        backbone: the network; its forward must return ``(B, embed_dim)``.
        name: the registry name it was created under (``timm:resnet18``, ``medcl:/x/enc.pt``).
        embed_dim: size of the output embedding.
        spec: its evaluation preprocessing.
        base_name: registry name that rebuilds the architecture offline (no pretrained tag);
            what :func:`~medcl.models.encoders.save_encoder` records. ``name`` by default.
        build_kwargs: keyword arguments the builder was given (``img_size=64``), saved with it.
        blocks: the backbone's blocks in order, for :meth:`trainable_blocks`; ``None`` when the
            architecture does not support it.
        head: modules or parameters after the blocks, trainable with them (final norms, proj).

    Shape:
        - Input: ``(batch_size, 3, height, width)``
        - Output: ``(batch_size, embed_dim)``
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        embed_dim: int,
        spec: TransformSpec,
        base_name: str | None = None,
        build_kwargs: Mapping[str, Any] | None = None,
        blocks: Sequence[nn.Module] | None = None,
        head: Sequence[nn.Module | nn.Parameter] = (),
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.backbone = backbone
        self.name = name
        self.base_name = base_name or name
        self.embed_dim = int(embed_dim)
        self.spec = spec
        self.eval_transform = EvalTransform(spec)
        self.build_kwargs: dict[str, Any] = dict(build_kwargs or {})
        self.provenance: dict[str, Any] = {"source": "random init"}
        self._blocks = list(blocks) if blocks is not None else None
        self._head = list(head)
        self._frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected input (B, 3, H, W), got {tuple(x.shape)}")
        out: torch.Tensor = self.backbone(x)
        return out

    def set_spec(self, spec: TransformSpec) -> None:
        """Replace the preprocessing (e.g. with the one an encoder was pretrained with)."""
        self.spec = spec
        self.eval_transform = EvalTransform(spec)

    @property
    def frozen(self) -> bool:
        """True after :meth:`freeze`: no parameter trains and every layer stays in eval mode."""
        return self._frozen

    @property
    def num_blocks(self) -> int | None:
        """How many blocks :meth:`trainable_blocks` can choose from (``None``: unsupported)."""
        return None if self._blocks is None else len(self._blocks)

    def freeze(self, frozen: bool = True) -> Self:
        """Stop (or restore) gradients for every parameter; frozen layers stay in eval mode."""
        for p in self.parameters():
            p.requires_grad_(not frozen)
        self._frozen = frozen
        return self.train(self.training)

    def trainable_blocks(self, n: int) -> Self:
        """Train only the last ``n`` blocks and the head (final norm / projection).

        Supported for timm ResNets (blocks are ``layer1..layer4``), timm ViTs (``blocks`` plus
        ``norm``/``fc_norm``), timm EfficientNets (the stages of ``blocks`` plus ``conv_head`` and
        ``bn2``) and open_clip ViTs (``transformer.resblocks`` plus ``ln_post`` and ``proj``).
        Batch norms of the frozen part stay in eval mode during training.

        Raises:
            ValueError: the architecture has no block list, or ``n`` is out of range.
        """
        if self._blocks is None:
            raise ValueError(
                f"encoder '{self.name}' does not support trainable_blocks; supported: timm "
                "ResNets and ViTs, open_clip ViTs (use freeze() or train all parameters)"
            )
        if not 1 <= n <= len(self._blocks):
            raise ValueError(f"n must be in 1..{len(self._blocks)} for '{self.name}', got {n}")
        for p in self.parameters():
            p.requires_grad_(False)
        for item in [*self._blocks[-n:], *self._head]:
            params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            for p in params:
                p.requires_grad_(True)
        self._frozen = False
        return self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if mode and self._frozen:
            self.backbone.eval()
        elif mode:
            # running statistics of frozen batch norms must not drift while the rest trains
            for m in self.backbone.modules():
                own = list(m.parameters(recurse=False))
                if isinstance(m, _NormBase) and own and not any(p.requires_grad for p in own):
                    m.eval()
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}"
