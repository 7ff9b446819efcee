"""``medcl data inspect``: say what a volume, slide or labelled image set is, and draw a preview.

Writes into its output folder ``summary.json`` (what was printed), ``preview.png`` and the resolved
``config.yaml``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.errors import InvalidInputError
from medcl.workspace import slug, stage_dir, workspace_root

log = logging.getLogger(__name__)

Kind = Literal["volume", "volumes", "slide", "images"]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")
TABLE_SUFFIXES = (".csv",)


class InspectConfig(StrictModel):
    """Options of ``medcl data inspect``."""

    path: Path
    kind: Literal["auto", "volume", "volumes", "slide", "images"] = "auto"
    label: Path | None = None
    frame: int | None = Field(default=None, ge=0)
    series_uid: str | None = None
    mpp: float | None = Field(default=None, gt=0)
    image_format: str = "auto"
    out_dir: Path | None = None
    max_size: int = Field(default=1024, ge=64, le=8192)
    per_class: int = Field(default=6, ge=1, le=32)
    seed: int = 0


@dataclass(frozen=True)
class InspectResult:
    """What :func:`run_inspect` found and wrote."""

    kind: Kind
    summary: dict[str, Any]
    preview: Path
    out_dir: Path


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def detect_kind(path: Path) -> Kind:
    """Guess what ``path`` holds from its name and, for folders, their content.

    Raises:
        InvalidInputError: when the path does not exist or holds nothing medcl reads.
    """
    if not path.exists():
        raise InvalidInputError(path, "no such file or folder")
    name = path.name.lower()
    if path.is_file():
        if name.endswith(VOLUME_SUFFIXES) or _is_dicom_file(path):
            return "volume"
        if name.endswith(SLIDE_SUFFIXES):
            return "slide"
        if name.endswith(TABLE_SUFFIXES):
            return "images"
        raise InvalidInputError(
            path,
            "unrecognised file type; expected a volume (.nii, .nii.gz, .nrrd, .dcm), a slide "
            "(.svs, .tif, .tiff, .ndpi, .mrxs, .scn) or a manifest (.csv)",
        )
    files = [p for p in sorted(path.iterdir()) if p.is_file()]
    if files and sum(_is_dicom_file(p) for p in files[:50]) >= max(1, len(files[:50]) // 2):
        return "volume"
    if (path / "HAM10000_metadata.csv").is_file() or (path / "metadata.csv").is_file():
        return "images"
    if any(
        p.is_dir() and (p.name.startswith("sub-") or p.name in {"imagesTr", "imagesTs"})
        for p in path.iterdir()
    ):
        return "volumes"
    if any(p.name.lower().endswith(VOLUME_SUFFIXES) for p in files):
        return "volumes"
    if any(p.is_dir() for p in path.iterdir()):
        return "images"
    raise InvalidInputError(
        path, "folder holds no DICOM series, volume collection or labelled image set"
    )


def default_out_dir(cfg: InspectConfig, kind: Kind, workspace: Path | None = None) -> Path:
    """``<workspace>/inspect/<kind>_<name>``."""
    name = cfg.path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".csv", ".svs", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return stage_dir(workspace or workspace_root(), "inspect", f"{kind}_{slug(name)}")


def _inspect_volume(cfg: InspectConfig, out_png: Path) -> dict[str, Any]:
    from medcl.io.volumes import read_label, read_volume
    from medcl.viz.volumes import describe_volume, render_volume_preview

    vol = read_volume(cfg.path, frame=cfg.frame, series_uid=cfg.series_uid)
    label = read_label(cfg.label, vol) if cfg.label is not None else None
    summary = describe_volume(vol, label)
    render_volume_preview(vol, label, out_png, title=cfg.path.name)
    return summary


def _inspect_volume_folder(cfg: InspectConfig, out_png: Path) -> dict[str, Any]:
    from medcl.io.datasets.volume_folders import find_volume_pairs
    from medcl.io.volumes import read_label, read_volume
    from medcl.viz.volumes import describe_volume, render_volume_preview

    items = find_volume_pairs(cfg.path)
    if not items:
        raise InvalidInputError(cfg.path, "no volumes found in this folder")
    rows = []
    for item in items:
        vol = read_volume(item.image)
        rows.append(
            {
                "subject": item.subject,
                "image": str(item.image),
                "label": str(item.label) if item.label else None,
                "modality": item.modality,
                "shape": list(vol.shape),
                "spacing": [round(float(s), 4) for s in vol.spacing],
                "orientation": vol.orientation,
            }
        )
    first = next((it for it in items if it.label is not None), items[0])
    vol = read_volume(first.image)
    label = read_label(first.label, vol) if first.label is not None else None
    render_volume_preview(vol, label, out_png, title=f"{first.subject}: {first.image.name}")
    return {
        "n_volumes": len(items),
        "n_labelled": sum(it.label is not None for it in items),
        "volumes": rows,
        "preview_of": describe_volume(vol, label),
    }


def _inspect_slide(cfg: InspectConfig, out_png: Path) -> dict[str, Any]:
    from medcl.io.slides import open_slide
    from medcl.viz.slides import describe_slide, render_slide_preview

    with open_slide(cfg.path, mpp=cfg.mpp) as slide:
        summary = describe_slide(slide)
        render_slide_preview(slide, out_png, max_size=cfg.max_size)
    return summary


def _inspect_images(cfg: InspectConfig, out_png: Path) -> dict[str, Any]:
    from medcl.io.images import load_image_set
    from medcl.viz.images import describe_image_set, render_image_grid

    ds = load_image_set(cfg.path, format=cfg.image_format)
    summary = describe_image_set(ds)
    render_image_grid(ds, out_png, per_class=cfg.per_class, seed=cfg.seed)
    return summary


_RUNNERS = {
    "volume": _inspect_volume,
    "volumes": _inspect_volume_folder,
    "slide": _inspect_slide,
    "images": _inspect_images,
}


def run_inspect(cfg: InspectConfig, *, workspace: Path | None = None) -> InspectResult:
    """Read ``cfg.path``, write ``summary.json``, ``preview.png`` and ``config.yaml``."""
    kind: Kind = detect_kind(cfg.path) if cfg.kind == "auto" else cfg.kind
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg, kind, workspace)
    out_dir.mkdir(parents=True, exist_ok=True)
    preview = out_dir / "preview.png"
    log.info("inspecting %s as %s", cfg.path, kind)
    summary = {"kind": kind, "path": str(cfg.path), **_RUNNERS[kind](cfg, preview)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    save_config(cfg, out_dir)
    return InspectResult(kind=kind, summary=summary, preview=preview, out_dir=out_dir)
