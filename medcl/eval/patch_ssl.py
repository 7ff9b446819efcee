"""``medcl eval patch-ssl``: random init vs SimCLR vs SupCon, probed with k-NN and a linear probe.

For every seed: a randomly initialised encoder (seeded), the encoder pretrained with SimCLR
(NT-Xent) and with SupCon (labels) on the train part of the group split, each probed on the test
part. Reports balanced accuracy (mean +- std over seeds) as ``results.md`` (and into the README
between markers with ``--readme``), every run in ``results.csv``. Finished runs are skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.engine.stamps import check_stamp, output_settings
from medcl.eval.probe_job import ProbeConfig, ProbeRow, probe_encoder
from medcl.eval.tables import update_readme
from medcl.pretrain.patch import PatchPretrainConfig, run_pretrain_patch
from medcl.workspace import job_dir

log = logging.getLogger(__name__)

MARKERS = ("<!-- patch-ssl:start -->", "<!-- patch-ssl:end -->")


class PatchSSLEvalConfig(StrictModel):
    """Seeds, the pretraining recipe (its loss is set per method) and the probe."""

    name: str = "patch_ssl"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    pretrain: PatchPretrainConfig = Field(default_factory=PatchPretrainConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    out_dir: Path | None = None


METHODS = (("random init", None), ("SimCLR", "ntxent"), ("SupCon (labels)", "supcon"))


def _run_one(
    cfg: PatchSSLEvalConfig,
    method: str,
    loss: str | None,
    seed: int,
    root: Path,
    data_root: Path | None,
) -> ProbeRow:
    folder = root / f"{method.split()[0].lower()}_seed{seed}"
    done = folder / "probe.json"
    pre = cfg.pretrain.model_copy(deep=True)
    if loss is not None:
        pre.loss = loss
        pre.name = f"{method} seed {seed}"
        pre.out_dir = folder / "pretrain"
        pre.train = pre.train.model_copy(update={"seed": seed})
    settings = {
        "method": method,
        "seed": seed,
        "pretrain": output_settings(pre.model_dump(mode="json")) if loss else pre.encoder,
        "probe": output_settings(cfg.probe.model_dump(mode="json")),
    }
    # a finished run is reused only when it was made with these settings (else: refused)
    check_stamp(folder, settings, has_outputs=done.is_file() or (folder / "pretrain").exists())
    if done.is_file():
        return ProbeRow(**json.loads(done.read_text()))
    name = cfg.pretrain.encoder
    if loss is not None:
        tic = time.perf_counter()
        res = run_pretrain_patch(pre, data_root=data_root)
        log.info("%s seed %d pretrained in %.0f s", method, seed, time.perf_counter() - tic)
        name = f"medcl:{res.encoder}"
    row = probe_encoder(name, cfg.probe, data_root, seed=seed)
    row = ProbeRow(**{**asdict(row), "encoder": method})
    done.write_text(json.dumps(asdict(row), indent=2) + "\n")
    return row


def _cell(values: list[float]) -> str:
    arr = np.array(values)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return f"{arr.mean():.3f} +- {std:.3f}"


def run_patch_ssl_eval(
    cfg: PatchSSLEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[dict[str, list[ProbeRow]], str]:
    """Run every (seed, method); returns rows per method and the markdown table."""
    root = job_dir(cfg.out_dir, workspace, "eval", cfg.name)
    save_config(cfg, root)
    tic = time.perf_counter()
    rows: dict[str, list[ProbeRow]] = {m: [] for m, _ in METHODS}
    for seed in cfg.seeds:
        for method, loss in METHODS:
            rows[method].append(_run_one(cfg, method, loss, seed, root, data_root))
    lines = [
        "| encoder | k-NN balanced acc. | linear balanced acc. | k-NN acc. | linear acc. |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, _ in METHODS:
        rs = rows[method]
        lines.append(
            f"| {method} | {_cell([r.knn_balanced_accuracy for r in rs])} | "
            f"{_cell([r.linear_balanced_accuracy for r in rs])} | "
            f"{_cell([r.knn_accuracy for r in rs])} | {_cell([r.linear_accuracy for r in rs])} |"
        )
    table = "\n".join(lines) + "\n"
    (root / "results.md").write_text(table)
    with (root / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "seed", *list(asdict(rows[METHODS[0][0]][0]))[1:]])
        for method, _ in METHODS:
            for seed, r in zip(cfg.seeds, rows[method], strict=True):
                writer.writerow([method, seed, *list(asdict(r).values())[1:]])
    total = time.perf_counter() - tic
    if readme is not None:
        first = rows[METHODS[0][0]][0]
        note = (
            f"Produced by `medcl eval patch-ssl` in {total / 60:.1f} min (seeds {cfg.seeds}; "
            f"{first.n_train} train / {first.n_test} test images, split by group)."
        )
        update_readme(readme, table, note, markers=MARKERS)
    return rows, table
