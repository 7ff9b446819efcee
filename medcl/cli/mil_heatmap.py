"""``medcl mil heatmap``: explain one slide with a trained MIL model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, is_rank_zero, print_summary, resolve_config


def add_heatmap_command(mil_sub: Any) -> None:
    """Add the ``heatmap`` sub-command to the ``medcl mil`` group's subparsers."""
    p = mil_sub.add_parser(
        "heatmap",
        help="heatmap, QuPath tiles and top tiles of a slide from a trained MIL model",
        description=(
            "Scores every tile of a slide's feature bag with a model from `medcl mil train` "
            "(instance probabilities for ins/max/mean, attention for abmil/transmil) and writes "
            "<stem>_heatmap.png, <stem>_tiles.geojson (QuPath), top_tiles/, scores.h5 and "
            "prediction.json into --out."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="model.pt from `medcl mil train`")
    p.add_argument("--features", type=Path, required=True, help="the slide's features .h5/.pt")
    p.add_argument("--slide", type=Path, required=True, help="the slide file (svs, tif, ...)")
    p.add_argument("--mpp", type=float, default=None, help="level-0 um/px when the slide lacks it")
    p.add_argument("--out", dest="out_dir", type=Path, required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=None, help="colour weight (default 0.5)")
    p.add_argument("--top-k", type=int, default=None, help="top tiles saved (default 8)")
    p.add_argument("--bottom-k", type=int, default=None, help="bottom tiles saved (default 0)")
    p.add_argument(
        "--normalise",
        choices=["auto", "rank", "minmax", "none"],
        default=None,
        help="default auto: raw instance probabilities, rank-normalised attention",
    )
    p.add_argument(
        "--cmap", default=None, help="matplotlib colour map (default viridis; magma, cividis...)"
    )
    p.add_argument("--thumbnail-size", type=int, default=None, help="heatmap longer side")
    p.add_argument(
        "--classify-threshold",
        type=float,
        default=None,
        help="classify GeoJSON tiles: raw score >= threshold -> positive class",
    )
    add_config_args(p)
    p.set_defaults(func=_heatmap)


def _heatmap(args: argparse.Namespace) -> int:
    from medcl.config import save_config
    from medcl.mil.slide_heatmap import HeatmapConfig, run_slide_heatmap

    cfg = resolve_config(
        HeatmapConfig,
        args,
        {
            "alpha": args.alpha,
            "top_k": args.top_k,
            "bottom_k": args.bottom_k,
            "normalise": args.normalise,
            "cmap": args.cmap,
            "thumbnail_size": args.thumbnail_size,
            "classify_threshold": args.classify_threshold,
        },
    )
    result = run_slide_heatmap(
        args.model, args.features, args.slide, args.out_dir, cfg, mpp=args.mpp
    )
    save_config(cfg, args.out_dir)
    if is_rank_zero():
        print_summary(
            {
                "slide": result["slide"],
                "predicted_class": result["predicted_class"],
                "probabilities": result["probabilities"],
                "n_tiles": result["n_tiles"],
                "score_kind": result["score_kind"],
                "score_label": result["score_label"],
                "out": str(args.out_dir),
            }
        )
    return 0
