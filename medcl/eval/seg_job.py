"""``medcl eval seg``: a fine-tuned segmentation model on any folder of labelled volumes.

The model file (``model.pt`` of ``medcl finetune seg``) carries its class map and the
preprocessing it was trained with (slice size, in-plane mode, intensity settings), so every
volume is prepared the same way. For each labelled volume the job writes Dice and HD95 of every
structure (``scores.csv``), the predicted mask as NIfTI with the input's affine
(``masks/<id>_pred.nii.gz``, label values as in the model's class map), and a summary
(``summary.md``, ``summary.json``). Output folder: ``--out`` or
``<workspace>/eval_seg/<model>_<data>/``.

A label map holding a value outside the model's class map is refused before anything runs,
naming the model's classes and the values found.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from medcl.errors import InvalidInputError
from medcl.eval.seg import summarise_scores, summary_table
from medcl.io.datasets.volume_folders import VolumeItem, find_volume_pairs
from medcl.io.volumes import read_label, read_volume
from medcl.metrics import segmentation_scores
from medcl.models.unet import UNet, UNetConfig, create_unet
from medcl.pretrain.predict import predict_probabilities
from medcl.pretrain.slices import (
    InplaneConfig,
    map_labels,
    prepare_volume,
    restore_probabilities,
    spacing_known,
)
from medcl.pretrain.weights import read_unet_weights
from medcl.workspace import job_dir, slug

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegEvalResult:
    """Where the outputs went, the summary table and per-volume scores."""

    out_dir: Path
    table: str
    summary: dict[str, dict[str, float]]
    volumes: list[dict[str, Any]]


def load_seg_model(path: Path) -> tuple[UNet, dict[str, int], dict[str, Any]]:
    """The UNet of a ``medcl finetune seg`` model file, its classes and its preprocessing.

    Raises:
        InvalidInputError: unreadable file, or one without a class map or preprocessing record.
    """
    payload = read_unet_weights(path)
    meta = payload.get("meta") or {}
    classes = meta.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise InvalidInputError(path, "no class map: not a model written by medcl finetune seg")
    prep = meta.get("preprocessing")
    if not isinstance(prep, dict):
        raise InvalidInputError(
            path,
            "no preprocessing record (written by an older medcl): fine-tune it again to evaluate",
        )
    arch = payload.get("arch") or {}
    cfg = UNetConfig(
        **{
            k: v
            for k, v in arch.items()
            if k in {"spatial_dims", "channels", "in_channels", "norm"}
        },
        out_channels=len(classes) + 1,
    )
    model = create_unet(cfg)
    model.load_pretrained(
        {"arch": arch, "state_dict": payload["state_dict"]},
        ("encoder", "decoder", "seg_head"),
        source=str(path),
    )
    model.eval()
    return model, {str(k): int(v) for k, v in classes.items()}, prep


def check_label_values(items: list[VolumeItem], classes: dict[str, int], model: Path) -> None:
    """Refuse labels with values the model does not know (reads the label headers' data)."""
    allowed = set(classes.values()) | {0}
    found: dict[int, Path] = {}
    for item in items:
        assert item.label is not None
        values = np.unique(np.asarray(read_volume(item.label).array)).astype(np.int64)
        for v in values.tolist():
            found.setdefault(int(v), item.label)
    extra = sorted(set(found) - allowed)
    if extra:
        shown = ", ".join(f"{v} (e.g. in {found[v].name})" for v in extra[:5])
        model_classes = ", ".join(f"{k}={v}" for k, v in classes.items())
        raise InvalidInputError(
            model,
            f"classes do not match the labels: the model has {model_classes}; the labels also "
            f"hold {shown}",
        )
    if not (set(found) & set(classes.values())):
        raise InvalidInputError(
            model,
            f"none of the model's classes {classes} occurs in the labels (values {sorted(found)})",
        )


def run_eval_seg(
    model_path: Path,
    data_dir: Path,
    *,
    out_dir: Path | None = None,
    workspace: Path | None = None,
    layout: str = "auto",
    save_masks: bool = True,
    progress: bool = True,
) -> SegEvalResult:
    """Evaluate ``model_path`` on every labelled volume of ``data_dir`` (see module docstring)."""
    tic = time.perf_counter()
    model, classes, prep = load_seg_model(Path(model_path))
    items_all = find_volume_pairs(data_dir, layout=layout)  # type: ignore[arg-type]
    items = [i for i in items_all if i.label is not None]
    for i in items_all:
        if i.label is None:
            log.warning("%s: no label; skipped", i.image)
    if not items:
        raise InvalidInputError(data_dir, "no labelled volume found")
    check_label_values(items, classes, Path(model_path))
    out = job_dir(
        out_dir,
        workspace,
        "eval_seg",
        f"{slug(Path(model_path).parent.name or 'model')}_{slug(Path(data_dir).name)}",
    )
    names = list(classes)
    values = [classes[n] for n in names]
    inplane = InplaneConfig(**prep["inplane"])
    size = (int(prep["size"][0]), int(prep["size"][1]))
    per_volume: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    units: set[str] = set()
    lut = np.array([0, *values], dtype=np.int16)
    for item in tqdm(items, desc="volumes", disable=not progress, leave=False):
        image = read_volume(item.image)
        assert item.label is not None
        label = read_label(item.label, image)
        vol = prepare_volume(
            image,
            None,
            size=size,
            intensity=prep.get("modality", "auto"),
            ct_window=tuple(prep["ct_window"]),
            mr_percentiles=tuple(prep["mr_percentiles"]),
            inplane=inplane,
            volume_id=_volume_id(item),
        )
        pred = restore_probabilities(predict_probabilities(model, vol), vol)
        target = map_labels(label.array, values, source=str(item.label))
        known = spacing_known(image.affine)
        spacing = (
            tuple(float(v) for v in nib.affines.voxel_sizes(image.affine))
            if known
            else (
                1.0,
                1.0,
                1.0,
            )
        )
        units.add("mm" if known else "voxels")
        scores = segmentation_scores(pred, target, classes, spacing)
        per_volume.append({"volume": vol.id, **scores})
        for n in names:
            rows.append([vol.id, n, f"{scores[n]['dice']:.4f}", f"{scores[n]['hd95']:.2f}"])
        if save_masks:
            (out / "masks").mkdir(exist_ok=True)
            nib.save(
                nib.Nifti1Image(lut[pred], image.affine), out / "masks" / f"{vol.id}_pred.nii.gz"
            )
    summary = summarise_scores(per_volume, names)
    unit = "mm" if units == {"mm"} else ("voxels" if units == {"voxels"} else "mm or voxels")
    table = summary_table(summary, unit)
    with (out / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["volume", "structure", "dice", "hd95"])
        writer.writerows(rows)
    seconds = time.perf_counter() - tic
    note = (
        f"`medcl eval seg` of {model_path} on {len(items)} labelled volumes of {data_dir} "
        f"({seconds:.1f} s); HD95 in {unit}; preprocessing: {vol.meta['inplane']}.\n\n"
    )
    (out / "summary.md").write_text(note + table, encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "model": str(model_path),
                "data": str(data_dir),
                "classes": classes,
                "hd95_unit": unit,
                "seconds": seconds,
                "summary": summary,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    log.info("evaluated %d volumes in %.1f s", len(items), seconds)
    return SegEvalResult(out, table, summary, per_volume)


def _volume_id(item: VolumeItem) -> str:
    name = item.image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
