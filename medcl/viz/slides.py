"""Describe a whole-slide image and save a captioned thumbnail to look at."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

from medcl.io.slides import Slide

logger = logging.getLogger(__name__)


def describe_slide(slide: Slide) -> dict[str, Any]:
    """Plain-data summary of a slide (JSON-serialisable).

    Returns:
        ``{"path", "backend", "vendor", "dimensions": [w, h], "mpp", "mpp_source",
        "magnification", "levels": [{"level", "dimensions", "downsample", "mpp"}],
        "associated_images": {name: [w, h]}}``.
    """
    levels = [
        {
            "level": level,
            "dimensions": list(dims),
            "downsample": slide.level_downsamples[level],
            "mpp": slide.level_mpp(level),
        }
        for level, dims in enumerate(slide.level_dimensions)
    ]
    return {
        "path": str(slide.path),
        "backend": slide.backend,
        "vendor": slide.vendor,
        "dimensions": list(slide.dimensions),
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "magnification": slide.magnification,
        "levels": levels,
        "associated_images": {k: list(v) for k, v in slide.associated_images.items()},
    }


def preview_caption(slide: Slide) -> str:
    """Two-line caption: file name, then size, mpp (with source), magnification and levels."""
    width, height = slide.dimensions
    mpp = f"{slide.mpp:.3g} um/px ({slide.mpp_source})" if slide.mpp is not None else "mpp unknown"
    mag = (
        f"{slide.magnification:g}x" if slide.magnification is not None else "magnification unknown"
    )
    return (
        f"{slide.path.name}\n{width} x {height} px | {mpp} | {mag} | "
        f"{slide.level_count} level{'s' if slide.level_count != 1 else ''} | {slide.backend}"
    )


def render_slide_preview(
    slide: Slide, out_png: str | PathLike[str], *, max_size: int = 1024
) -> Path:
    """Save the slide thumbnail (longer side ``max_size``) with a caption as a PNG.

    Returns:
        The written PNG path (parent folders are created).
    """
    from matplotlib.figure import Figure

    thumb = slide.thumbnail(max_size)
    dpi = 100
    height, width = thumb.shape[:2]
    caption_px = 60
    fig = Figure(figsize=(width / dpi, (height + caption_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + caption_px)))
    ax.imshow(thumb, interpolation="none")
    ax.set_axis_off()
    fig.text(
        0.01,
        1.0 - 6 / (height + caption_px),
        preview_caption(slide),
        ha="left",
        va="top",
        fontsize=9,
        family="monospace",
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    logger.info("%s: preview written to %s", slide.path, out)
    return out
