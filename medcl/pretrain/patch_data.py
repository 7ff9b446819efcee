"""Patch pretraining on the tiles of a slide, and the batching of two views.

Images of a labelled set come through :mod:`medcl.io.image_selection` (shared with every job
that reads an image set); what lives here serves pretraining alone. Slide tiles are read on the
fly through :mod:`medcl.io.slides` from level-0 coordinates; each DataLoader worker opens its own
slide handle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medcl.errors import InvalidInputError
from medcl.io.image_selection import SlideTilesConfig

log = logging.getLogger(__name__)


def slide_tile_coords(path: Path, cfg: SlideTilesConfig) -> tuple[np.ndarray, int, int]:
    """Level-0 tile corners with tissue, the level to read and the read size at that level."""
    from medcl.io.slides import open_slide
    from medcl.wsi.tiling import grid_coords, tissue_fraction, tissue_mask

    with open_slide(path, mpp=cfg.slide_mpp) as slide:
        factor = cfg.mpp / slide.require_mpp() if cfg.mpp is not None else 1.0
        level = slide.get_best_level_for_downsample(factor)
        level_ds = slide.level_downsamples[level]
        read = max(1, round(cfg.tile * factor / level_ds))
        span = round(cfg.tile * factor)  # tile side in level-0 pixels
        thumb = slide.thumbnail(1024)
        mask = tissue_mask(thumb)
        scale = thumb.shape[1] / slide.dimensions[0]
        coords = grid_coords(slide.dimensions, span)
        keep = tissue_fraction(coords, span, mask, scale) >= cfg.min_tissue
        coords = coords[keep]
    if cfg.max_tiles is not None and len(coords) > cfg.max_tiles:
        rng = np.random.default_rng(0)
        coords = coords[np.sort(rng.choice(len(coords), cfg.max_tiles, replace=False))]
    if len(coords) == 0:
        raise InvalidInputError(path, "no tissue tiles found (empty slide or threshold too high)")
    log.info("%s: %d tissue tiles at level %d (%d px read)", path.name, len(coords), level, read)
    return coords, level, read


class SlideTilesDataset(Dataset[tuple[Any, int]]):
    """Tiles of one slide read on the fly; label is always 0 (unlabelled)."""

    def __init__(
        self, path: Path, cfg: SlideTilesConfig, transform: Callable[[np.ndarray], Any]
    ) -> None:
        self.path = path
        self.cfg = cfg
        self.coords, self.level, self.read = slide_tile_coords(path, cfg)
        self.transform = transform
        self._slide: Any = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if self._slide is None:  # one handle per worker process
            from medcl.io.slides import open_slide

            self._slide = open_slide(self.path, mpp=self.cfg.slide_mpp)
        x, y = (int(v) for v in self.coords[i])
        tile = self._slide.read_region((x, y), self.level, (self.read, self.read))
        return self.transform(tile), 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slide"] = None  # handles do not cross process boundaries
        return state


def collate_views(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[((v1, v2), label), ...]`` -> ``(v1 (B,3,H,W), v2 (B,3,H,W), labels (B,))``."""
    v1 = torch.stack([b[0][0] for b in batch])
    v2 = torch.stack([b[0][1] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    return v1, v2, labels
