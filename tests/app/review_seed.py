"""A seeded review store for the app tests: two users and one case of each kind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from PIL import Image

from medcl.mil.heatmap import save_colorbar_png
from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

REVIEWER = ("alice", "alice-password-1")
ADMIN = ("root", "root-password-1")
CASE_KEYS = {"slide": "slide:tiny-1", "volume": "volume:ct-1", "retrieval": "retrieval:q-1"}
TILE_SIDE = 32
TILE_XY = ((192, 128), (64, 32))  # level-0 corners of the two top tiles, best first
TILE_NAMES = ("top_01_score0.9000_x192_y128.png", "top_02_score0.7000_x64_y32.png")
SLIDE_CARD = {
    "display_name": "Tiny ABMIL tumour classifier (test)",
    "trained_on": "two synthetic slides",
    "intended_use": "App tests only.",
    "research_only": True,
    "uncertainty": "1 - the probability of the predicted class",
}
RETRIEVAL_CARD = {
    "display_name": "Lesion retrieval vote",
    "trained_on": "a pool of labelled dermoscopy images",
    "intended_use": "Second reader for dermoscopy.",
    "research_only": False,
}


@dataclass
class Seeded:
    root: Path
    url: str
    case_ids: dict[str, int]  # kind -> case id


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> str:
    Image.new("RGB", size, colour).save(path)
    return path.name


def write_predictions(root: Path) -> Path:
    """Artifacts of three cases (tiny slide, 8x8x4 volume, retrieval images) + predictions.jsonl."""
    art = root / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    image, _ = synthetic_tissue_image(192, 256, seed=1, n_blobs=3)
    write_pyramidal_tiff(art / "tiny.tif", image, levels=2, tile=64, mpp=0.5)
    heat = np.zeros((6, 8, 4), dtype=np.uint8)
    heat[..., 0], heat[..., 3] = 255, np.linspace(0, 255, 8, dtype=np.uint8)[None, :]
    Image.fromarray(heat, "RGBA").save(art / "tiny_heatmap.png")
    # top tiles named as medcl.mil.top_tiles names them (rank, score, level-0 corner)
    tiles = [
        _png(art / TILE_NAMES[i], (200, 50 * i, 120), (TILE_SIDE, TILE_SIDE)) for i in range(2)
    ]
    with h5py.File(art / "tiny_scores.h5", "w") as f:
        coords = f.create_dataset("coords", data=np.array(TILE_XY, dtype=np.int64))
        coords.attrs["patch_size_level0"] = TILE_SIDE
        f.create_dataset("scores", data=np.array([0.9, 0.7], dtype=np.float32))
    save_colorbar_png(art / "tiny_colorbar.png", label="attention (rank-normalised)")
    vol = np.zeros((8, 8, 4), dtype=np.float32)
    vol[2:6, 2:6, :] = 100.0
    pred = np.zeros((8, 8, 4), dtype=np.uint8)
    pred[2:6, 2:6, :] = 1
    truth = np.zeros((8, 8, 4), dtype=np.uint8)
    truth[2:6, 2:5, :] = 1
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for name, arr in (("ct.nii.gz", vol), ("ct_pred.nii.gz", pred), ("ct_seg.nii.gz", truth)):
        nib.save(nib.Nifti1Image(arr, affine), art / name)
    query = _png(art / "q.png", (180, 120, 90))
    demos = [
        {
            "path": _png(art / f"d{i}.png", (60 * i, 90, 90)),
            "label": lab,
            "similarity": sim,
            "domain": "trunk",
        }
        for i, (lab, sim) in enumerate((("nv", 0.91), ("mel", 0.72)))
    ]
    rows = [
        {
            "case_key": CASE_KEYS["slide"],
            "kind": "slide",
            "model": "abmil",
            "model_version": "fold0-abc",
            "site": "hospital-a",
            "label": "tumor",
            "scores": {"tumor": 0.55, "normal": 0.45},
            "artifacts": {
                "slide": "artifacts/tiny.tif",
                "mpp": 0.5,
                "thumbnail": None,
                "heatmap": "artifacts/tiny_heatmap.png",
                "heatmap_colorbar": "artifacts/tiny_colorbar.png",
                "heatmap_score": "attention (rank-normalised)",
                "scores": "artifacts/tiny_scores.h5",
                "top_tiles": [f"artifacts/{t}" for t in tiles],
            },
            "model_card": SLIDE_CARD,
        },
        {
            "case_key": CASE_KEYS["volume"],
            "kind": "volume",
            "model": "unet",
            "model_version": "v1",
            "site": "hospital-b",
            "label": "liver",
            "scores": {"liver": 0.9},
            "uncertainty": 0.1,
            "artifacts": {
                "image": "artifacts/ct.nii.gz",
                "mask": "artifacts/ct_pred.nii.gz",
                "ground_truth": "artifacts/ct_seg.nii.gz",
                "labels": {"1": "liver"},
                "dice": None,
            },
        },
        {
            "case_key": CASE_KEYS["retrieval"],
            "kind": "retrieval",
            "model": "lmm",
            "model_version": "v2",
            "site": "hospital-a",
            "label": "nv",
            "scores": {"nv": 0.7, "mel": 0.3},
            "artifacts": {
                "query": f"artifacts/{query}",
                "true_label": "mel",
                "demonstrations": [{**d, "path": f"artifacts/{d['path']}"} for d in demos],
                "lmm_answer": "nv",
                "selector": "invariant",
            },
            "model_card": RETRIEVAL_CARD,
        },
    ]
    out = root / "predictions.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def seed(root: Path) -> Seeded:
    """Create the store under ``root`` with users alice (reviewer) and root (admin) and 3 cases."""
    from medcl.review import auth, service
    from medcl.review.db import Store

    url = f"sqlite:///{root / 'review.db'}"
    store = Store.open(url, workspace=root)
    auth.create_user(store, *REVIEWER)
    auth.create_user(store, *ADMIN, role="admin")
    result = service.import_predictions(store, None, write_predictions(root))
    assert result.created == 3, result
    admin = auth.get_session_user(store, auth.authenticate(store, *ADMIN).token)
    assert admin is not None
    page = service.list_cases(store, admin, page_size=10)
    ids = {c.kind: c.id for c in page.items}
    store.engine.dispose()
    return Seeded(root, url, ids)
