"""Which images of a labelled set a job reads: the data config, class map, domain filter, split.

Patch pretraining, CCI training, probes, retrieval and the MIL bag evaluation all read their
images through :func:`load_filtered_image_set` and split them with :func:`split_image_set`, so
every job sees the same class map and the same group-aware split for the same settings.
Relative paths are read under the data root (:func:`medcl.workspace.data_path`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from torch.utils.data import Dataset

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.io.images import ImageSet, load_image_set, read_image
from medcl.io.splits import group_split
from medcl.workspace import data_path


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
    path = data_path(cfg.path, root)
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
