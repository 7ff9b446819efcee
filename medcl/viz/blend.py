"""Blend a coloured layer over an RGB image: the one blending rule of every heatmap view."""

from __future__ import annotations

import numpy as np


def blend_layer(image: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``round((1 - w) * image + w * colour)`` per pixel, clipped to uint8.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        The picture underneath (e.g. a slide thumbnail).
    colour : (H, W, 3) float ndarray
        The layer's colour in 0..255 units (not rounded: the rounding happens once, here).
    weight : (H, W) float ndarray
        The layer's weight in [0, 1]; 0 leaves ``image`` unchanged.

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    base = np.asarray(image, dtype=np.uint8).astype(np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if base.ndim != 3 or base.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {base.shape}")
    if colour.shape != base.shape or w.shape != base.shape[:2]:
        raise ValueError(
            f"colour {colour.shape} and weight {w.shape} must match the image {base.shape}"
        )
    mixed = (1.0 - w[..., None]) * base + w[..., None] * np.asarray(colour, dtype=np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
