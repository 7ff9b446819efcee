"""A fine-tuned 2D UNet over every slice of a prepared volume (fine-tuning, ``medcl eval seg``)."""

from __future__ import annotations

import numpy as np
import torch

from medcl.models.unet import UNet
from medcl.pretrain.slices import PreparedVolume


@torch.no_grad()
def predict_probabilities(model: UNet, vol: PreparedVolume, *, batch_size: int = 32) -> np.ndarray:
    """Softmax class probabilities ``(Z, C, H, W)`` for every slice of ``vol``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, vol.depth, batch_size):
            x = torch.from_numpy(vol.image[start : start + batch_size][:, None]).to(device)
            out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)
