"""Look at an image set before training on it: a summary dict and a grid of examples per class."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medcl.io.images import ImageSet, read_image

logger = logging.getLogger(__name__)


def describe_image_set(ds: ImageSet) -> dict[str, Any]:
    """A JSON-safe summary of ``ds``.

    Returns:
        ``{'name', 'n_images', 'n_groups', 'n_classes', 'n_domains', 'class_map',
        'class_counts', 'domain_counts', 'class_by_domain'}``, where ``class_by_domain`` maps
        class -> domain -> image count (every class and domain present, zeros included).
    """
    df = ds.df
    domains = sorted(df["domain"].unique())
    table = df.groupby(["label", "domain"]).size()
    class_by_domain = {c: {d: int(table.get((c, d), 0)) for d in domains} for c in ds.classes}
    return {
        "name": ds.name,
        "n_images": len(ds),
        "n_groups": int(df["group"].nunique()),
        "n_classes": len(ds.class_map),
        "n_domains": len(domains),
        "class_map": dict(ds.class_map),
        "class_counts": ds.class_counts(),
        "domain_counts": ds.domain_counts(),
        "class_by_domain": class_by_domain,
    }


def sample_per_class(ds: ImageSet, per_class: int, seed: int = 0) -> dict[str, list[int]]:
    """Up to ``per_class`` row positions for each class, drawn without replacement by ``seed``."""
    rng = np.random.default_rng(seed)
    labels = ds.df["label"].to_numpy()
    out: dict[str, list[int]] = {}
    for c in ds.classes:
        idx = np.flatnonzero(labels == c)
        take = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else idx
        out[c] = sorted(int(i) for i in take)
    return out


def render_image_grid(
    ds: ImageSet,
    out_png: str | os.PathLike[str],
    *,
    per_class: int = 6,
    seed: int = 0,
    max_classes: int = 12,
    thumb_inches: float = 1.6,
) -> Path:
    """Save a PNG with one row per class and ``per_class`` random images of it.

    Each row is labelled with the class name, its index and its image count. Classes beyond
    ``max_classes`` (in class-index order) are left out with a log message.

    Returns:
        The written PNG's path.
    """
    if per_class < 1 or max_classes < 1:
        raise ValueError("per_class and max_classes must be at least 1")
    picks = sample_per_class(ds, per_class, seed)
    classes = ds.classes
    if len(classes) > max_classes:
        logger.info("%s: showing %d of %d classes", ds.name, max_classes, len(classes))
        classes = classes[:max_classes]
    counts = ds.class_counts()
    fig, axes = plt.subplots(
        len(classes),
        per_class,
        figsize=(per_class * thumb_inches + 1.2, len(classes) * thumb_inches),
        squeeze=False,
    )
    try:
        for r, c in enumerate(classes):
            for j in range(per_class):
                ax = axes[r, j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if j < len(picks[c]):
                    ax.imshow(read_image(ds.df["path"].iloc[picks[c][j]]))
            axes[r, 0].set_ylabel(
                f"{c} ({ds.class_map[c]})\nn={counts[c]}", rotation=0, ha="right", va="center"
            )
        fig.suptitle(f"{ds.name}: {len(ds)} images, {len(ds.class_map)} classes")
        fig.tight_layout()
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=80)
    finally:
        plt.close(fig)
    return out
