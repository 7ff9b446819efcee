"""``medcl eval probe``: k-NN and linear-probe accuracy of frozen encoders on a labelled set.

The set is split by group (lesion, patient, slide) with the same split as pretraining
(``data.test_size``, ``data.split_seed``), so no probed test image was seen in pretraining.
Writes ``probe.csv`` / ``probe.json`` and the resolved config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import Field
from torch.utils.data import DataLoader

from medcl.config import StrictModel, save_config
from medcl.eval.features import extract_features
from medcl.eval.metrics import classification_metrics
from medcl.eval.probe import knn_predict, linear_probe
from medcl.io.image_selection import (
    ImageViewsDataset,
    PatchDataConfig,
    load_filtered_image_set,
    split_image_set,
)
from medcl.models.encoders import create_encoder
from medcl.workspace import data_root as resolve_data_root
from medcl.workspace import job_dir

log = logging.getLogger(__name__)


class ProbeConfig(StrictModel):
    """Encoders to probe and the labelled set to probe them on."""

    name: str = "probe"
    data: PatchDataConfig = Field(default_factory=PatchDataConfig)
    encoders: list[str] = Field(default_factory=lambda: ["timm:resnet18"])
    image_size: int | None = Field(default=None, ge=16)
    batch_size: int = Field(default=128, ge=1)
    k: int = Field(default=20, ge=1)
    knn_temperature: float = Field(default=0.07, gt=0)
    seed: int = 0
    out_dir: Path | None = None


@dataclass(frozen=True)
class ProbeRow:
    """Accuracy and balanced accuracy of one encoder."""

    encoder: str
    knn_accuracy: float
    knn_balanced_accuracy: float
    linear_accuracy: float
    linear_balanced_accuracy: float
    n_train: int
    n_test: int


def probe_encoder(
    name: str, cfg: ProbeConfig, root: Path | None, *, seed: int | None = None
) -> ProbeRow:
    """Extract frozen features of ``name`` on the split and score k-NN and a linear probe."""
    torch.manual_seed(cfg.seed if seed is None else seed)  # random-init encoders are seeded
    encoder = create_encoder(name)
    spec = encoder.spec
    if cfg.image_size is not None:
        from dataclasses import replace

        spec = replace(spec, size=(cfg.image_size, cfg.image_size), crop_pct=1.0)
        encoder.set_spec(spec)
    full = load_filtered_image_set(cfg.data, root)
    train, test = split_image_set(full, cfg.data)
    loaders = [
        DataLoader(
            ImageViewsDataset(part, encoder.eval_transform),
            batch_size=cfg.batch_size,
            num_workers=cfg.data.num_workers,
        )
        for part in (train, test)
    ]
    (xtr, ytr), (xte, yte) = (extract_features(encoder, dl, progress=False) for dl in loaders)
    num_classes = len(full.class_map)
    knn = classification_metrics(
        yte,
        knn_predict(
            xtr, ytr, xte, k=cfg.k, temperature=cfg.knn_temperature, num_classes=num_classes
        ),
    )
    lin = classification_metrics(yte, linear_probe(xtr, ytr, xte, seed=cfg.seed))
    log.info(
        "%s: k-NN bal. acc %.3f, linear bal. acc %.3f",
        name,
        knn["balanced_accuracy"],
        lin["balanced_accuracy"],
    )
    return ProbeRow(
        name,
        knn["accuracy"],
        knn["balanced_accuracy"],
        lin["accuracy"],
        lin["balanced_accuracy"],
        len(ytr),
        len(yte),
    )


def run_probe(
    cfg: ProbeConfig, *, workspace: Path | None = None, data_root: Path | None = None
) -> list[ProbeRow]:
    """Probe every encoder of ``cfg``; writes ``probe.json`` and ``probe.csv``."""
    out_dir = job_dir(cfg.out_dir, workspace, "probe", cfg.name)
    save_config(cfg, out_dir)
    root = resolve_data_root(data_root)
    rows = [probe_encoder(name, cfg, root) for name in cfg.encoders]
    (out_dir / "probe.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    header = list(asdict(rows[0])) if rows else []
    lines = [",".join(header)] + [",".join(str(v) for v in asdict(r).values()) for r in rows]
    (out_dir / "probe.csv").write_text("\n".join(lines) + "\n")
    return rows
