"""Where patch pretraining gets its images: a labelled image set or the tiles of a slide.

Slide tiles are read on the fly through :mod:`medcl.io.slides` from level-0 coordinates; each
DataLoader worker opens its own slide handle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.io.images import ImageSet, load_image_set, read_image
from medcl.io.splits import group_split

log = logging.getLogger(__name__)


class SlideTilesConfig(StrictModel):
    """Tiles of one slide: a grid at ``mpp`` (or level 0) kept where there is tissue."""

    tile: int = Field(default=256, ge=16)
    mpp: float | None = Field(default=None, gt=0)
    slide_mpp: float | None = Field(default=None, gt=0)
    min_tissue: float = Field(default=0.5, ge=0, le=1)
    max_tiles: int | None = Field(default=None, ge=1)


class PatchDataConfig(StrictModel):
    """Images for patch pretraining and probing."""

    path: Path | None = None
    format: str = "auto"
    format_kwargs: dict[str, Any] = Field(default_factory=dict)
    domains: list[str] | None = None
    classes: list[str] | None = Field(
        default=None, description="explicit class map (index = position); default: sorted labels"
    )
    drop_unmapped: bool = False
    test_size: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    use: Literal["train", "all"] = "train"
    slide: SlideTilesConfig = Field(default_factory=SlideTilesConfig)
    num_workers: int = Field(default=2, ge=0)


def load_filtered_image_set(cfg: PatchDataConfig, root: Path | None) -> ImageSet:
    """The configured image set, filtered by domain."""
    if cfg.path is None:
        raise InvalidInputError("data.path", "no image set given")
    path = cfg.path if cfg.path.is_absolute() or root is None else root / cfg.path
    ds = load_image_set(path, format=cfg.format, **cfg.format_kwargs)
    if cfg.classes is not None:
        if len(set(cfg.classes)) != len(cfg.classes):
            raise InvalidInputError(path, f"data.classes lists a class twice: {cfg.classes}")
        unmapped = sorted(set(ds.df["label"]) - set(cfg.classes))
        if unmapped and not cfg.drop_unmapped:
            raise InvalidInputError(
                path,
                f"labels not in the class map data.classes: {', '.join(unmapped)} (add them, or "
                "set data.drop_unmapped=true to leave those images out)",
            )
        class_map = {c: i for i, c in enumerate(cfg.classes)}
        ds = ds.with_class_map(class_map, drop_unmapped=cfg.drop_unmapped)
    return ds.filter(domains=cfg.domains) if cfg.domains else ds


def split_image_set(ds: ImageSet, cfg: PatchDataConfig) -> tuple[ImageSet, ImageSet]:
    """Group-aware, label-stratified (train, test) split: no group in both."""
    split = group_split(
        ds.df["group"].to_numpy(), ds.labels, test_size=cfg.test_size, seed=cfg.split_seed
    )
    return ds.subset(split["train"]), ds.subset(split["test"])


class ImageViewsDataset(Dataset[tuple[Any, int]]):
    """Images of an :class:`ImageSet` through ``transform`` (views or an eval transform).

    Returns ``(transform(image), label index)``; ``transform`` gets an ``(H, W, 3)`` uint8 array.
    """

    def __init__(self, ds: ImageSet, transform: Callable[[np.ndarray], Any]) -> None:
        self.paths = [str(p) for p in ds.df["path"]]
        self.labels = ds.labels.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(read_image(self.paths[i])), int(self.labels[i])


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
