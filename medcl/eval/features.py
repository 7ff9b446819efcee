"""Frozen features of an encoder over a dataset: what probes, retrieval and MIL bags start from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``encoder`` over ``(images, labels)`` batches.

    Returns:
        features ``(N, D)`` float32 and labels ``(N,)`` int64.
    """
    encoder.eval().to(device)
    feats, labels = [], []
    for images, targets in tqdm(loader, desc="features", disable=not progress, leave=False):
        feats.append(encoder(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)
