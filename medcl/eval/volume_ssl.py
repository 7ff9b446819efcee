"""``medcl eval volume-ssl``: random init vs GR vs GD- vs GD- + local, few-label fine-tuning.

For every seed and method the runner pretrains (unless the method is ``random``), then fine-tunes
every task from those weights through the same :func:`run_finetune_seg` users run, and reports
mean Dice per task and method over the seeds (mean +- standard deviation). The table is written as
``results.md`` (and into a README section between markers, with ``--readme``), ``results.csv``
holds every run, ``results.png`` plots it, and every run keeps its own folder, config and metrics.
Finished runs are skipped when the command is run again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medcl.config import StrictModel, save_config
from medcl.eval.tables import update_readme
from medcl.pretrain.finetune import FinetuneSegConfig, run_finetune_seg
from medcl.pretrain.volume import VolumePretrainConfig, run_pretrain_volume
from medcl.workspace import settings_hash, slug, stage_dir, workspace_root

log = logging.getLogger(__name__)

README_START = "<!-- volume-ssl:start -->"
README_END = "<!-- volume-ssl:end -->"


class MethodConfig(StrictModel):
    """One row of the comparison."""

    name: str
    global_loss: Literal["none", "gr", "gd-", "gd"]
    local: bool = False


class TaskConfig(StrictModel):
    """One fine-tuning protocol (a column of the table)."""

    name: str
    finetune: FinetuneSegConfig


def _default_methods() -> list[MethodConfig]:
    return [
        MethodConfig(name="random init", global_loss="none"),
        MethodConfig(name="GR", global_loss="gr"),
        MethodConfig(name="GD-", global_loss="gd-"),
        MethodConfig(name="GD- + local", global_loss="gd-", local=True),
    ]


class VolumeSSLEvalConfig(StrictModel):
    """The evaluation: methods x seeds x tasks on one pretraining set."""

    name: str = "volume_ssl"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    methods: list[MethodConfig] = Field(default_factory=_default_methods)
    pretrain: VolumePretrainConfig = Field(default_factory=VolumePretrainConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)
    out_dir: Path | None = None


@dataclass(frozen=True)
class EvalRow:
    """One fine-tuning run's result."""

    task: str
    method: str
    seed: int
    mean_dice: float
    class_dice: dict[str, float]
    seconds: float
    fresh: bool = True


def _pretrain(
    cfg: VolumeSSLEvalConfig, method: MethodConfig, seed: int, root: Path, data_root: Path | None
) -> Path | None:
    if method.global_loss == "none" and not method.local:
        return None
    # folders carry a hash of the settings, so a changed setting never reuses a stale run
    tag = settings_hash(cfg.pretrain.model_dump(mode="json", exclude={"name", "out_dir"}))
    out = root / "pretrain" / f"{slug(method.name)}_seed{seed}_{tag}"
    weights = out / "pretrained.pt"
    if weights.is_file():
        return weights
    # GD- + local shares its global stage with GD- of the same seed: reuse it when present
    if method.local:
        twin = root / "pretrain" / f"{_global_twin(cfg, method)}_seed{seed}_{tag}" / "global"
        if twin.is_dir() and not (out / "global").exists():
            shutil.copytree(twin, out / "global")
    pre = cfg.pretrain.model_copy(deep=True)
    pre.name = f"{method.name} seed {seed}"
    pre.out_dir = out
    pre.train = pre.train.model_copy(update={"seed": seed})
    pre.global_stage = pre.global_stage.model_copy(update={"loss": method.global_loss})
    if method.global_loss == "none":
        pre.global_stage = pre.global_stage.model_copy(update={"steps": 0})
    pre.local_stage = pre.local_stage.model_copy(update={"enabled": method.local})
    run_pretrain_volume(pre, data_root=data_root)
    return weights


def _global_twin(cfg: VolumeSSLEvalConfig, method: MethodConfig) -> str:
    for other in cfg.methods:
        if other.global_loss == method.global_loss and not other.local:
            return slug(other.name)
    return slug(method.name)


def _finetune(
    task: TaskConfig,
    method: MethodConfig,
    seed: int,
    weights: Path | None,
    root: Path,
    data_root: Path | None,
) -> EvalRow:
    tag = settings_hash(
        [task.finetune.model_dump(mode="json", exclude={"name", "out_dir"}), str(weights)]
    )
    out = root / "finetune" / slug(task.name) / f"{slug(method.name)}_seed{seed}_{tag}"
    done = out / "metrics.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        return EvalRow(
            task.name,
            method.name,
            seed,
            float(saved["mean_dice"]),
            {k: float(v) for k, v in saved["class_dice"].items()},
            float(saved.get("seconds", math.nan)),
            fresh=False,
        )
    ft = task.finetune.model_copy(deep=True)
    ft.name = f"{task.name} {method.name} seed {seed}"
    ft.out_dir = out
    ft.init = str(weights) if weights is not None else "random"
    ft.train = ft.train.model_copy(update={"seed": seed})
    tic = time.perf_counter()
    res = run_finetune_seg(ft, data_root=data_root)
    seconds = time.perf_counter() - tic
    saved = json.loads(done.read_text())
    saved["seconds"] = seconds
    done.write_text(json.dumps(saved, indent=2, default=str) + "\n")
    return EvalRow(task.name, method.name, seed, res.mean_dice, res.class_dice, seconds)


def summarise(rows: list[EvalRow], tasks: list[str], methods: list[str]) -> str:
    """A markdown table: methods x tasks, ``mean +- std`` of the mean Dice over seeds."""
    header = "| method | " + " | ".join(tasks) + " |"
    lines = [header, "|" + " --- |" * (len(tasks) + 1)]
    for m in methods:
        cells = []
        for t in tasks:
            vals = np.array([r.mean_dice for r in rows if r.task == t and r.method == m])
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                cells.append("n/a")
            else:
                std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
                cells.append(f"{vals.mean():.3f} +- {std:.3f} (n={vals.size})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[EvalRow], tasks: list[str], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for i, m in enumerate(methods):
            vals = [r.mean_dice for r in rows if r.task == t and r.method == m]
            ax.bar(i, float(np.nanmean(vals)) if vals else 0.0, color=f"C{i}", alpha=0.6)
            ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_title(t, fontsize=9)
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_volume_ssl_eval(
    cfg: VolumeSSLEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[EvalRow], str]:
    """Run every (seed, method, task); returns the rows and the markdown table."""
    root = (
        Path(cfg.out_dir)
        if cfg.out_dir
        else stage_dir(workspace or workspace_root(), "eval", cfg.name)
    )
    save_config(cfg, root)
    tic = time.perf_counter()
    rows: list[EvalRow] = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            weights = _pretrain(cfg, method, seed, root, data_root)
            for task in cfg.tasks:
                row = _finetune(task, method, seed, weights, root, data_root)
                log.info(
                    "%s | %s | seed %d: mean Dice %.3f", task.name, method.name, seed, row.mean_dice
                )
                rows.append(row)
    total = time.perf_counter() - tic
    tasks = [t.name for t in cfg.tasks]
    methods = [m.name for m in cfg.methods]
    table = summarise(rows, tasks, methods)
    (root / "results.md").write_text(table)
    with (root / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "method", "seed", "mean_dice", "class_dice", "seconds"])
        for r in rows:
            writer.writerow(
                [
                    r.task,
                    r.method,
                    r.seed,
                    f"{r.mean_dice:.4f}",
                    json.dumps({k: round(v, 4) for k, v in r.class_dice.items()}),
                    f"{r.seconds:.1f}",
                ]
            )
    _plot(rows, tasks, methods, root / "results.png")
    if readme is not None:
        fresh = sum(r.fresh for r in rows)
        note = (
            f"Produced by `medcl eval volume-ssl` (seeds {cfg.seeds}): {fresh} of {len(rows)} "
            f"fine-tuning runs computed by this invocation in {total / 60:.1f} min, the rest "
            "reused from an earlier invocation of the same command; per-run Dice and seconds "
            "in `results.csv`."
        )
        update_readme(readme, table, note, (README_START, README_END))
    return rows, table


def methods_summary(rows: list[EvalRow]) -> dict[str, Any]:
    """Mean Dice per (task, method) for programmatic checks."""
    out: dict[str, Any] = {}
    for r in rows:
        out.setdefault(r.task, {}).setdefault(r.method, []).append(r.mean_dice)
    return {t: {m: float(np.nanmean(v)) for m, v in ms.items()} for t, ms in out.items()}
