"""Explain one slide with a trained MIL model: heatmap, QuPath tiles, top tiles, prediction.

:func:`run_slide_heatmap` loads the model (:func:`medcl.mil.train.load_mil_model`), scores the
slide's feature bag (:func:`medcl.mil.train.predict_bags`: instance probabilities for
``ins``/``max``/``mean``, attention weights for ``abmil``/``transmil``/...), and writes into
``out_dir``::

    <stem>_heatmap.png     thumbnail with the tile scores blended in, title and a colour bar
                           naming the score and its range
    <stem>_heatmap_layer.png  the scores alone as an RGBA layer at thumbnail size (viewers blend it)
    <stem>_colorbar.png    the colour bar of the layer, to show beside it

The score is named for what it is: ``"instance probability"`` for instance classifiers (INS, max,
mean; shown raw, 0-1, by default: the probability means the same on every slide) and
``"attention (rank-normalised)"`` for attention models (ABMIL, TransMIL; attention weights sum
to one over a bag, so their raw size depends on the number of tiles: ranks by default).
    <stem>_tiles.geojson   one QuPath tile per instance with its raw score
    top_tiles/             the top-k (and bottom-k) tiles read from the slide + top_tiles.csv
    scores.h5              coords (N, 2) int64, scores (N,) raw, scores_normalised (N,)
    prediction.json        bag score, class probabilities, class names, geometry, outputs
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.io.geojson import write_geojson
from medcl.io.slides import Slide, open_slide
from medcl.mil.geojson import tiles_to_geojson
from medcl.mil.heatmap import (
    DEFAULT_CMAP,
    blend_heatmap,
    colorbar_ticks,
    heatmap_rgba,
    normalise_scores,
    save_colorbar_png,
    save_heatmap_png,
    score_label,
    tile_score_map,
)
from medcl.mil.top_tiles import save_top_tiles

logger = logging.getLogger(__name__)

INSTANCE_SCORE_AGGREGATORS = ("ins", "max", "mean")


class HeatmapConfig(StrictModel):
    """Options of ``medcl mil heatmap``."""

    alpha: float = Field(
        default=0.5, ge=0.0, le=1.0, description="colour weight over the thumbnail"
    )
    top_k: int = Field(default=8, ge=0, description="highest-scoring tiles saved as PNG")
    bottom_k: int = Field(default=0, ge=0, description="lowest-scoring tiles saved as PNG")
    thumbnail_size: int = Field(default=1024, ge=16, description="longer side of the heatmap")
    cmap: str = Field(default=DEFAULT_CMAP, description="viridis, magma, cividis... (uniform)")
    normalise: Literal["auto", "rank", "minmax", "none"] = Field(
        default="auto", description="auto: raw probabilities, ranks of attention"
    )
    colorbar: bool = True
    title: bool = True
    object_type: Literal["tile", "detection"] = "tile"
    classify_threshold: float | None = Field(
        default=None, description="GeoJSON tiles with raw score >= it are the positive class"
    )

    @field_validator("cmap")
    @classmethod
    def _known_cmap(cls, value: str) -> str:
        import matplotlib

        if value not in matplotlib.colormaps:
            raise ValueError(
                f"unknown colour map {value!r} (any matplotlib name: viridis, magma...)"
            )
        return value


def patch_geometry(
    attrs: dict[str, Any], slide: Slide, coords: np.ndarray, source: Path
) -> tuple[int, int, int]:
    """``(patch_size_level0, read_level, read_size)`` of the tiles of a bag.

    Uses the coords attrs of the contract (``patch_size_level0``, ``patch_level``,
    ``read_size``); for CLAM/TRIDENT bags ``patch_size`` x the downsample of ``patch_level``;
    with ``patch_size`` and ``target_mpp`` but no level, ``patch_size * target_mpp / mpp``;
    with no attrs at all, the smallest spacing of the coordinate grid (logged as a guess).
    """
    downsamples = slide.level_downsamples
    level = int(attrs.get("patch_level", 0))
    if not 0 <= level < len(downsamples):
        raise InvalidInputError(
            source, f"patch_level {level} but {slide.path.name} has {len(downsamples)} levels"
        )
    if "patch_size_level0" in attrs:
        size0 = round(float(attrs["patch_size_level0"]))
    elif "patch_size" in attrs and ("patch_level" in attrs or "target_mpp" not in attrs):
        size0 = round(float(attrs["patch_size"]) * downsamples[level])
    elif "patch_size" in attrs:
        mpp = slide.require_mpp()
        size0 = round(float(attrs["patch_size"]) * float(attrs["target_mpp"]) / mpp)
    else:
        steps = [np.diff(np.unique(coords[:, a])) for a in (0, 1)]
        positive = np.concatenate(steps)
        positive = positive[positive > 0]
        if positive.size == 0:
            raise InvalidInputError(
                source, "no patch_size attribute and too few tiles to infer the tile size"
            )
        size0 = int(positive.min())
        logger.warning("%s: no patch_size attrs; tile side guessed as %d px", source, size0)
    if size0 < 1:
        raise InvalidInputError(source, f"tile side must be positive, got {size0}")
    read_size = attrs.get("read_size")
    if read_size is None:
        read_size = attrs.get("patch_size") if "patch_level" in attrs else None
    if read_size is None:
        read_size = max(1, round(size0 / downsamples[level]))
    return size0, level, int(read_size)


def _check_slide(attrs: dict[str, Any], slide: Slide, coords: np.ndarray, source: Path) -> None:
    w, h = slide.dimensions
    if "level0_width" in attrs and "level0_height" in attrs:
        fw, fh = int(attrs["level0_width"]), int(attrs["level0_height"])
        if (fw, fh) != (w, h):
            raise InvalidInputError(
                source, f"tiles come from a {fw}x{fh} slide but {slide.path.name} is {w}x{h}"
            )
    if len(coords) and (coords.min() < 0 or coords[:, 0].max() >= w or coords[:, 1].max() >= h):
        raise InvalidInputError(
            source, f"tile coordinates fall outside {slide.path.name} ({w}x{h}): another slide?"
        )


def run_slide_heatmap(
    model_path: str | PathLike[str],
    features_path: str | PathLike[str],
    slide_path: str | PathLike[str],
    out_dir: str | PathLike[str],
    cfg: HeatmapConfig | None = None,
    *,
    mpp: float | None = None,
) -> dict[str, Any]:
    """Score a slide's bag with a MIL model and write the heatmap outputs (module docstring).

    Returns:
        The content of ``prediction.json``.
    """
    import h5py
    import torch

    from medcl.mil.data import Bag
    from medcl.mil.train import load_mil_model, predict_bags
    from medcl.wsi.bags import read_bag_file

    cfg = cfg or HeatmapConfig()
    feats_file, out = Path(features_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bag_file = read_bag_file(feats_file)
    if bag_file.coords is None:
        raise InvalidInputError(feats_file, "no tile coordinates ('coords'); a heatmap needs them")
    if len(bag_file) == 0:
        raise InvalidInputError(feats_file, "the bag holds no tiles")
    model, meta = load_mil_model(model_path)
    in_dim = meta.get("in_dim")
    if in_dim is not None and int(in_dim) != bag_file.features.shape[1]:
        raise InvalidInputError(
            feats_file,
            f"features have {bag_file.features.shape[1]} dimensions but the model expects "
            f"{in_dim} (features of another encoder?)",
        )
    aggregator = str(meta.get("aggregator", "unknown"))
    kind = "instance_probability" if aggregator in INSTANCE_SCORE_AGGREGATORS else "attention"
    class_names = [str(c) for c in meta.get("class_names") or []]

    with open_slide(slide_path, mpp=mpp) as slide:
        coords = bag_file.coords
        _check_slide(bag_file.attrs, slide, coords, feats_file)
        size0, level, read_size = patch_geometry(bag_file.attrs, slide, coords, feats_file)
        stem = slide.path.stem
        bag = Bag(
            features=torch.from_numpy(bag_file.features),
            label=0,
            bag_id=stem,
            patient=stem,
            coords=coords,
        )
        preds = predict_bags(model, [bag])
        raw = np.asarray(preds.instance_scores[0], dtype=np.float64).reshape(-1)
        if len(raw) != len(coords):
            raise RuntimeError(f"model gave {len(raw)} instance scores for {len(coords)} tiles")
        normalise = cfg.normalise
        if normalise == "auto":
            normalise = "none" if kind == "instance_probability" else "rank"
        shown = normalise_scores(raw, normalise)
        vmin, vmax = 0.0, 1.0
        if normalise == "none" and kind == "attention" and np.ptp(raw) > 0:
            vmin, vmax = float(raw.min()), float(raw.max())
        label = score_label(kind, normalise)
        ticks = colorbar_ticks(normalise, vmin, vmax)

        thumb = slide.thumbnail(cfg.thumbnail_size)
        score_map = tile_score_map(coords, shown, size0, slide.dimensions, thumb.shape[:2])
        blended = blend_heatmap(thumb, score_map, cfg.alpha, cfg.cmap, vmin=vmin, vmax=vmax)
        probs = np.asarray(preds.bag_probs[0], dtype=np.float64)
        names = (
            class_names if len(class_names) == len(probs) else [str(i) for i in range(len(probs))]
        )
        predicted = names[int(probs.argmax())]
        bag_score = float(preds.bag_scores[0])
        title = f"{stem}\n{predicted} p={probs.max():.3f} | {aggregator}: {label}"
        heatmap_png = save_heatmap_png(
            out / f"{stem}_heatmap.png",
            blended,
            title=title if cfg.title else None,
            colorbar=cfg.colorbar,
            cmap=cfg.cmap,
            vmin=vmin,
            vmax=vmax,
            colorbar_label=label,
            colorbar_ticks=ticks,
        )
        colorbar_png = save_colorbar_png(
            out / f"{stem}_colorbar.png", cmap=cfg.cmap, vmin=vmin, vmax=vmax, label=label,
            ticks=ticks,
        )  # fmt: skip
        layer_png = out / f"{stem}_heatmap_layer.png"
        Image.fromarray(heatmap_rgba(score_map, cfg.cmap, vmin=vmin, vmax=vmax), "RGBA").save(
            layer_png
        )
        labels = None
        if cfg.classify_threshold is not None and len(names) == 2:
            labels = [names[1] if s >= cfg.classify_threshold else names[0] for s in raw]
        geojson = write_geojson(
            out / f"{stem}_tiles.geojson",
            tiles_to_geojson(
                coords,
                size0,
                raw,
                labels=labels,
                object_type=cfg.object_type,
                extra_measurements={"score_normalised": shown},
            ),
        )
        top_dir = out / "top_tiles"
        top = save_top_tiles(
            slide, coords, raw, cfg.top_k, level, read_size, top_dir, bottom_k=cfg.bottom_k
        )

    scores_h5 = out / "scores.h5"
    with h5py.File(scores_h5, "w") as f:
        ds = f.create_dataset("coords", data=coords.astype(np.int64))
        ds.attrs.update({"patch_size_level0": size0, "patch_level": level, "read_size": read_size})
        f.create_dataset("scores", data=raw.astype(np.float32))
        f.create_dataset("scores_normalised", data=shown.astype(np.float32))
        f.attrs.update({"score_kind": kind, "normalise": normalise, "bag_score": bag_score})
        f.attrs.update({"score_label": label, "cmap": cfg.cmap})
        f.attrs.update({"aggregator": aggregator, "slide": Path(slide_path).name})
    prediction: dict[str, Any] = {
        "slide": str(slide_path),
        "features": str(feats_file),
        "model": str(model_path),
        "aggregator": aggregator,
        "class_names": names,
        "probabilities": {n: float(p) for n, p in zip(names, probs, strict=True)},
        "predicted_class": predicted,
        "bag_score": bag_score,
        "n_tiles": len(coords),
        "score_kind": kind,
        "score_label": label,
        "normalise": normalise,
        "cmap": cfg.cmap,
        "colour_range": [vmin, vmax],
        "patch_size_level0": size0,
        "outputs": {
            "heatmap": heatmap_png.name,
            "heatmap_layer": layer_png.name,
            "colorbar": colorbar_png.name,
            "geojson": geojson.name,
            "top_tiles": [str(r["file"]) for r in top],
            "scores": scores_h5.name,
        },
    }
    (out / "prediction.json").write_text(json.dumps(prediction, indent=2), encoding="utf-8")
    logger.info("%s: %s p=%.3f, outputs in %s", stem, predicted, probs.max(), out)
    return prediction
