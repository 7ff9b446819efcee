"""Config and loading of the volumes a volume job trains on (images with optional labels)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from tqdm.auto import tqdm

from medcl.config import StrictModel
from medcl.io.volumes import read_label, read_volume
from medcl.pretrain.slices import InplaneConfig, PreparedVolume, prepare_volume
from medcl.workspace import data_path
from medcl.workspace import data_root as resolve_data_root

log = logging.getLogger(__name__)


class VolumeSource(StrictModel):
    """One volume: a NIfTI/NRRD file or DICOM series folder, and optionally its label map.

    Relative paths are read under the data root (``data.root``, ``--data-root`` or
    ``$MEDCL_DATA``).
    """

    image: Path
    label: Path | None = None
    id: str | None = None
    frame: int | None = Field(default=None, ge=0)
    series_uid: str | None = None
    modality: Literal["auto", "ct", "mr"] = "auto"


class SliceDataConfig(StrictModel):
    """How volumes become 2D training slices (see :func:`medcl.pretrain.slices.prepare_volume`)."""

    root: Path | None = None
    size: tuple[int, int] = (128, 128)
    inplane: InplaneConfig = Field(default_factory=InplaneConfig)
    ct_window: tuple[float, float] = (-250.0, 250.0)
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    num_workers: int = Field(default=0, ge=0)

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8:
            raise ValueError(f"size must be at least 8 x 8 pixels, got {value}")
        return value


def resolve_path(path: Path, root: Path | None) -> Path:
    """``path`` itself when absolute, else under ``root`` (or as given when no root).

    :func:`medcl.workspace.data_path` without the existence check: the volume readers name a
    missing file themselves.
    """
    return data_path(path, root, must_exist=False)


class PretrainDataConfig(SliceDataConfig):
    """Unlabelled volumes for pretraining (labels, if given, are not read)."""

    volumes: list[VolumeSource] = Field(default_factory=list)


def load_volumes(
    cfg: SliceDataConfig,
    sources: Sequence[VolumeSource],
    *,
    data_root: Path | None = None,
    class_values: Sequence[int] | None = None,
    other_labels: Literal["error", "background"] = "error",
    with_labels: bool = True,
    progress: bool = True,
) -> list[PreparedVolume]:
    """Read and prepare ``sources`` with a progress bar.

    Raises:
        InvalidInputError: from the readers, naming the file (corrupt, misaligned label, ...).
    """
    root = cfg.root or resolve_data_root(data_root)
    out: list[PreparedVolume] = []
    items = list(sources)
    for src in tqdm(items, desc="volumes", disable=not progress, leave=False):
        image_path = resolve_path(src.image, root)
        image = read_volume(image_path, frame=src.frame, series_uid=src.series_uid)
        label = None
        if with_labels and src.label is not None:
            label = read_label(resolve_path(src.label, root), image)
        prepared = prepare_volume(
            image,
            label,
            size=cfg.size,
            intensity=src.modality,
            ct_window=cfg.ct_window,
            mr_percentiles=cfg.mr_percentiles,
            class_values=class_values,
            other_labels=other_labels,
            volume_id=src.id,
            inplane=cfg.inplane,
        )
        log.info(
            "%s: %d slices (%s; %s)",
            prepared.id,
            prepared.depth,
            prepared.modality,
            prepared.meta["inplane"],
        )
        out.append(prepared)
    ids = [v.id for v in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        for v in out:  # disambiguate by position; ids name outputs
            if v.id in dup:
                v.id = f"{v.id}_{out.index(v)}"
    return out
