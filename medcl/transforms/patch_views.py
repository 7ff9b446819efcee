"""Two-view augmentations for contrastive training on RGB patches (torchvision ``transforms.v2``).

Presets (every step documented where it is built):

* :func:`pathology_views`: optional stain normalisation to a target (first, on the raw patch),
  random resized crop (scale 0.4-1), horizontal and vertical flips and a rotation by a random
  multiple of 90 degrees (tissue has no orientation), HED jitter (p = 0.8), mild brightness /
  contrast / saturation jitter without hue change (p = 0.8; colour variation comes from the
  stains), Gaussian blur (p = 0.5), no grayscale by default.
* :func:`dermoscopy_views`: crop (scale 0.2-1), flips, 90-degree rotations, strong colour jitter
  with hue (0.4, 0.4, 0.4, 0.1; p = 0.8), grayscale (p = 0.2), blur (p = 0.5), no HED jitter.
* :func:`eval_transform`: resize and centre crop, no randomness.

Inputs are PIL images or ``(H, W, 3)`` uint8 arrays; outputs ``(3, size, size)`` float32 tensors
normalised with ``mean`` / ``std`` (ImageNet's by default). Randomness comes from torch's global
generator (``torch.manual_seed`` makes the views reproducible), the HED jitter included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from medcl.transforms.stain import hed_jitter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalizer = Callable[[NDArray[Any]], NDArray[Any]]


def _as_rgb_array(image: Image.Image | NDArray[Any]) -> NDArray[np.uint8]:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a PIL image or an (H, W, 3) uint8 array, got {image.dtype} "
            f"{image.shape}"
        )
    return image


class StainNormalize:
    """Apply a fitted stain normaliser (:class:`~medcl.transforms.stain.MacenkoNormalizer` or
    :class:`~medcl.transforms.stain.ReinhardNormalizer`) to a PIL image or uint8 array.

    Returns an ``(H, W, 3)`` uint8 array.
    """

    def __init__(self, normalizer: Normalizer) -> None:
        self.normalizer = normalizer

    def __call__(self, image: Image.Image | NDArray[Any]) -> NDArray[np.uint8]:
        return np.asarray(self.normalizer(_as_rgb_array(image)), dtype=np.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.normalizer).__name__})"


class HEDJitter(v2.Transform):
    """:func:`~medcl.transforms.stain.hed_jitter` on a ``(3, H, W)`` uint8 image tensor.

    The factors are drawn from a seed taken from torch's global generator, so
    ``torch.manual_seed`` makes it reproducible like the other v2 transforms.

    Args:
        sigma: half-width of the multiplicative factor's range.
        bias: half-width of the additive shift's range.
    """

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def __init__(self, sigma: float = 0.05, bias: float = 0.05) -> None:
        super().__init__()
        if sigma < 0 or bias < 0:
            raise ValueError(f"sigma and bias must be >= 0, got {sigma} and {bias}")
        self.sigma, self.bias = float(sigma), float(bias)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"seed": int(torch.randint(0, 2**31 - 1, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8 or inpt.ndim != 3 or inpt.shape[0] != 3:
            raise ValueError(
                f"HEDJitter needs a (3, H, W) uint8 image, got {inpt.dtype} {inpt.shape}"
            )
        array = inpt.permute(1, 2, 0).numpy()
        out = hed_jitter(array, sigma=self.sigma, bias=self.bias, rng=params["seed"])
        result = torch.from_numpy(out).permute(2, 0, 1).contiguous()
        return tv_tensors.wrap(result, like=inpt) if isinstance(inpt, tv_tensors.Image) else result


class Rotate90(v2.Transform):
    """Rotate a ``(..., H, W)`` image counter-clockwise by ``k`` quarter turns (exact, no
    interpolation)."""

    _transformed_types = (tv_tensors.Image, torch.Tensor)

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k) % 4

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        result = torch.rot90(inpt.as_subclass(torch.Tensor), self.k, dims=(-2, -1))
        return tv_tensors.wrap(result, like=inpt) if isinstance(inpt, tv_tensors.Image) else result


def random_rotate90() -> v2.RandomChoice:
    """A rotation by 0, 90, 180 or 270 degrees, each with probability 1/4."""
    return v2.RandomChoice([Rotate90(k) for k in range(4)])


def _blur_kernel(size: int) -> int:
    """An odd kernel about a tenth of the patch side (SimCLR: 23 px for 224 px)."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def pathology_views(
    size: int,
    *,
    stain_normalize: Normalizer | None = None,
    crop_scale: tuple[float, float] = (0.4, 1.0),
    hed_sigma: float = 0.05,
    hed_bias: float = 0.05,
    hed_prob: float = 0.8,
    jitter: float = 0.2,
    jitter_prob: float = 0.8,
    blur_prob: float = 0.5,
    grayscale_prob: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """One random view of an H&E patch (call it twice, or wrap in :class:`TwoCropTransform`).

    Args:
        size: side of the output view in pixels.
        stain_normalize: a fitted Macenko / Reinhard normaliser applied first, before any
            augmentation; None skips it.
        crop_scale: area range of the random resized crop.
        hed_sigma, hed_bias: HED jitter ranges (Tellez et al. 2018), applied with ``hed_prob``.
        jitter: brightness, contrast and saturation jitter strength (no hue), with
            ``jitter_prob``.
        blur_prob: probability of a Gaussian blur (sigma 0.1-2, kernel ~ size / 10).
        grayscale_prob: probability of converting to grayscale (0 keeps the stain colours).
        mean, std: normalisation of the output.
    """
    _check_size(size)
    steps: list[Any] = [] if stain_normalize is None else [StainNormalize(stain_normalize)]
    steps += [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        random_rotate90(),
        v2.RandomApply([HEDJitter(hed_sigma, hed_bias)], p=hed_prob),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, 0.0)], p=jitter_prob),
        v2.RandomGrayscale(p=grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_prob),
    ]
    return v2.Compose(steps + _finish(mean, std))


def dermoscopy_views(
    size: int,
    *,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """One random view of a dermoscopy image (SimCLR-strength colour, no stain augmentation).

    Args:
        size: side of the output view in pixels.
        crop_scale: area range of the random resized crop.
        jitter: brightness, contrast, saturation, hue of the colour jitter, with ``jitter_prob``.
        grayscale_prob: probability of converting to grayscale.
        blur_prob: probability of a Gaussian blur (sigma 0.1-2, kernel ~ size / 10).
        mean, std: normalisation of the output.
    """
    _check_size(size)
    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        random_rotate90(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_prob),
        v2.RandomGrayscale(p=grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_prob),
    ]
    return v2.Compose(steps + _finish(mean, std))


def eval_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    stain_normalize: Normalizer | None = None,
) -> v2.Compose:
    """Deterministic preprocessing: optional stain normalisation, resize of the short side to
    ``size``, centre crop, scaling to [0, 1] and normalisation."""
    _check_size(size)
    steps: list[Any] = [] if stain_normalize is None else [StainNormalize(stain_normalize)]
    steps += [v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps + _finish(mean, std))


class TwoCropTransform:
    """Two independent views of one image: ``(view(x), view(x))``, or ``(view(x), view2(x))``."""

    def __init__(
        self, view: Callable[[Any], Tensor], view2: Callable[[Any], Tensor] | None = None
    ) -> None:
        self.view = view
        self.view2 = view if view2 is None else view2

    def __call__(self, image: Any) -> tuple[Tensor, Tensor]:
        return self.view(image), self.view2(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(view={self.view!r}, view2={self.view2!r})"
