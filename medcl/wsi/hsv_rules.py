"""HSV colour rules of tissue detection, on uint8 levels (pure numpy and Pillow).

Pillow converts RGB to HSV in uint8 (``level / 255`` is the float value in [0, 1]); every
threshold rule on a channel is a 256-entry table over those levels, applied as a few uint8
comparisons (:func:`where_levels`), so no float copy of a thumbnail is made. The results are the
float rules' exactly (tested): :func:`pen_mask` on floats and :func:`pen_mask_levels` on levels
mark the same pixels, :func:`otsu_of_levels` gives :func:`skimage.filters.threshold_otsu` of the
float values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PEN_COLORS: tuple[str, ...] = ("blue", "green", "black", "red")


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(h, w, 3)`` float32 HSV in [0, 1], to 1/255 of
    :func:`skimage.color.rgb2hsv` (through Pillow's C conversion, ~10x faster)."""
    from PIL import Image

    hsv = Image.fromarray(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)).convert("HSV")
    return np.asarray(hsv, dtype=np.float32) / np.float32(255.0)


PEN_RULES: dict[str, tuple[Any, Any, Any]] = {
    # per colour: predicates on hue, saturation and value (floats in [0, 1]), all must hold
    "blue": (lambda h: (h >= 0.55) & (h <= 0.70), lambda s: s >= 0.40, lambda v: v >= 0.55),
    "green": (lambda h: (h >= 0.20) & (h < 0.55), lambda s: s >= 0.20, lambda v: v >= 0),
    "black": (lambda h: h >= 0, lambda s: s < 0.25, lambda v: v < 0.25),
    "red": (lambda h: (h >= 0.97) | (h <= 0.03), lambda s: s >= 0.75, lambda v: v >= 0.40),
}
# the 256 values a channel of rgb_to_hsv takes, exactly as it computes them
LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _check_colors(colors: Sequence[str]) -> None:
    unknown = sorted(set(colors) - set(PEN_COLORS))
    if unknown:
        raise ValueError(f"unknown pen colours {unknown}; choose from {', '.join(PEN_COLORS)}")


def hsv_levels(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(h, w, 3)`` uint8 HSV (Pillow); ``/ 255`` gives
    :func:`rgb_to_hsv`."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)).convert("HSV")
    return np.asarray(image)


def pen_mask(hsv: np.ndarray, colors: Sequence[str] = PEN_COLORS) -> np.ndarray:
    """``(h, w)`` bool: pixels of ``hsv`` ``(h, w, 3)`` (floats in [0, 1]) matching a pen rule."""
    _check_colors(colors)
    out = np.zeros(hsv.shape[:2], dtype=bool)
    for color in colors:
        rule_h, rule_s, rule_v = PEN_RULES[color]
        out |= rule_h(hsv[..., 0]) & rule_s(hsv[..., 1]) & rule_v(hsv[..., 2])
    return out


def where_levels(channel: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[channel]`` for a ``(h, w)`` uint8 ``channel`` and a ``(256,)`` bool ``table``,
    as comparisons over the table's runs of True (a few vectorised passes; a gather through
    the table is 10x slower)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], table, [False]]).astype(np.int8)))
    out = np.zeros(channel.shape, dtype=bool)
    for lo, hi in zip(edges[0::2], edges[1::2] - 1, strict=True):
        if lo == 0 and hi == 255:
            out[:] = True
        elif lo == 0:
            out |= channel <= hi
        elif hi == 255:
            out |= channel >= lo
        else:
            out |= (channel >= lo) & (channel <= hi)
    return out


def pen_mask_levels(hsv8: np.ndarray, colors: Sequence[str]) -> np.ndarray:
    """:func:`pen_mask` of ``hsv8`` ``(h, w, 3)`` uint8 HSV (the value * 255), by the rules'
    tables over the 256 levels: the same pixels, without a float copy of the image."""
    _check_colors(colors)
    channels = [np.ascontiguousarray(hsv8[..., k]) for k in range(3)]
    out = np.zeros(hsv8.shape[:2], dtype=bool)
    for color in colors:
        hit = None
        for rule, channel in zip(PEN_RULES[color], channels, strict=True):
            table = rule(LEVELS)
            if table.all():
                continue
            part = where_levels(channel, table)
            hit = part if hit is None else hit & part
        out |= hit if hit is not None else True
    return out


def otsu_of_levels(counts: np.ndarray) -> float:
    """:func:`skimage.filters.threshold_otsu` of the float saturations whose uint8 level
    histogram is ``counts`` ``(256,)``: the same 256 bins over [min, max], from the counts."""
    present = np.flatnonzero(counts)
    values = LEVELS[present]
    hist, edges = np.histogram(
        values, bins=256, range=(values[0], values[-1]), weights=counts[present]
    )
    centers = (edges[:-1] + edges[1:]) / 2.0
    return otsu_threshold(hist.astype(np.int64), centers)


def otsu_threshold(counts: np.ndarray, centers: np.ndarray) -> float:
    """Otsu's threshold of a histogram (``counts`` and bin ``centers``, ``(B,)`` each): the
    centre that maximises the between-class variance (Otsu, IEEE SMC 1979), computed as
    :func:`skimage.filters.threshold_otsu` computes it (whose import pulls in scipy.ndimage)."""
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(variance))])
