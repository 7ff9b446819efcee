"""``medcl eval few-label``: Chaitanya et al. (NeurIPS 2020) on a patient-split volume dataset.

The protocol of the paper on its own dataset (ACDC): pretrain a 2D UNet on the unlabelled volumes
of every non-test patient with each method (GR, GD-, GD, GD- + local), then fine-tune from random
init and from each pretrained model with 1, 2 and 8 labelled volumes drawn from the training pool
per seed (the same volumes for every method of a seed: differences are paired), select the steps
on the validation patients, and report Dice per structure on the test patients. A ``benchmark``
row fine-tunes from random init on the whole training pool, so the few-label rows read as a
fraction of it, as in the paper.

Deviations from the paper, named: pretraining runs once per method (``pretrain_seed``), so the
interval over seeds measures the labelled subset and the fine-tuning, not the pretraining; image
size, channels and step budgets are smaller (2 CPU cores; see the config).

Outputs under ``<workspace>/eval/<name>/``: ``pretrain/<method>_<hash>/`` (stage folders with loss
curves), ``finetune/<method>/n<N>_seed<S>_<hash>/`` (one :func:`run_finetune_seg` job each),
``results.csv`` (one row per run with Dice and HD95 per structure), ``results.md`` (the tables),
``pretrain_curves.png`` and ``results.png``. Folder names carry a hash of the settings that
change their output, so a changed setting never reuses a stale run; finished runs are skipped.
``jobs`` runs that many stages or runs at once, each in its own process with its share of the
cores (:mod:`medcl.engine.runs`); it does not enter any folder name.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from medcl.config import StrictModel, save_config
from medcl.engine.runs import run_tasks
from medcl.errors import ConfigError, InvalidInputError
from medcl.eval.tables import check_readme, mean_interval, paired_interval, update_readme
from medcl.eval.volume_ssl import MethodConfig
from medcl.io.datasets.acdc import AcdcFrame, find_acdc, load_patient_split, patients
from medcl.pretrain.finetune import FinetuneSegConfig, run_finetune_seg
from medcl.pretrain.volume import VolumePretrainConfig, run_pretrain_volume
from medcl.pretrain.volume_data import VolumeSource
from medcl.workspace import data_path, settings_hash, slug, stage_dir, workspace_root

log = logging.getLogger(__name__)

README_START = "<!-- few-label:start -->"
README_END = "<!-- few-label:end -->"


def _default_methods() -> list[MethodConfig]:
    return [
        MethodConfig(name="random init", global_loss="none"),
        MethodConfig(name="GR", global_loss="gr"),
        MethodConfig(name="GD-", global_loss="gd-"),
        MethodConfig(name="GD", global_loss="gd"),
        MethodConfig(name="GD- + local", global_loss="gd-", local=True),
    ]


class PatientDatasetConfig(StrictModel):
    """A labelled volume dataset split by patient (ACDC layout)."""

    root: Path = Path("volumes/acdc")
    format: Literal["acdc"] = "acdc"
    split: Path = Path("configs/splits/acdc.yaml")
    classes: dict[str, int] = Field(default_factory=lambda: {"rv": 1, "myocardium": 2, "lv": 3})
    labelled_frames: Literal["first", "all"] = Field(
        default="first",
        description="a labelled volume is a patient's first frame (ACDC: end-diastole, as the "
        "reference code) or every frame of the patient",
    )
    test_frames: Literal["first", "all"] = "all"
    val_frames: Literal["first", "all"] = "first"


class FewLabelEvalConfig(StrictModel):
    """Methods x labelled-volume counts x seeds on a patient split."""

    name: str = "few_label"
    dataset: PatientDatasetConfig = Field(default_factory=PatientDatasetConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    labelled: list[int] = Field(default_factory=lambda: [1, 2, 8])
    seeds_by_count: dict[int, list[int]] = Field(
        default_factory=dict,
        description="seeds for particular labelled counts, where the spread over which patients "
        "are labelled is largest (e.g. {1: [0, ..., 9]}); other counts and the benchmark use "
        "`seeds`; counts not in `labelled` are not run (logged)",
    )
    benchmark: bool = True
    jobs: int = Field(
        default=1,
        ge=1,
        description="runs at once (pretraining stages, then fine-tuning runs), each in its own "
        "process with an equal share of the cores (medcl.engine.runs); not part of any run's "
        "settings, so finished runs are reused whatever it is",
    )
    methods: list[MethodConfig] = Field(default_factory=_default_methods)
    pretrain_seed: int = 0
    pretrain: VolumePretrainConfig = Field(default_factory=VolumePretrainConfig)
    finetune: FinetuneSegConfig = Field(default_factory=FinetuneSegConfig)
    out_dir: Path | None = None

    @field_validator("labelled")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("labelled counts must be positive")
        return sorted(set(value))

    @model_validator(mode="after")
    def _seeds_given(self) -> FewLabelEvalConfig:
        if any(not seeds for seeds in self.seeds_by_count.values()):
            raise ValueError("seeds_by_count: every count needs at least one seed")
        return self

    def seeds_for(self, n: int) -> list[int]:
        """The seeds run with ``n`` labelled volumes."""
        return list(self.seeds_by_count.get(n, self.seeds))

    def seeds_text(self) -> str:
        """The seeds as the README note states them, e.g. ``[0, 1, 2]; 1 labelled: [0, ..., 9]``."""
        extra = "".join(
            f"; {n} labelled: {self.seeds_for(n)}"
            for n in self.labelled
            if self.seeds_for(n) != self.seeds
        )
        return f"{self.seeds}{extra}"


BENCHMARK = "benchmark (all training patients)"


@dataclass
class RunRow:
    """One fine-tuning run."""

    method: str
    labelled: int
    seed: int
    mean_dice: float
    class_dice: dict[str, float]
    class_hd95: dict[str, float]
    steps: int
    best_step: int | None
    seconds: float
    fresh: bool = True
    patients: list[str] = field(default_factory=list)
    run_dir: Path | None = None


def _frames_of(
    by_patient: dict[str, list[AcdcFrame]], ids: list[str], which: str, *, labelled: bool
) -> list[VolumeSource]:
    out = []
    for pid in ids:
        frames = by_patient[pid]
        chosen = frames[:1] if which == "first" else frames
        for f in chosen:
            if labelled and f.label is None:
                log.warning("%s: no _gt label; skipped for fine-tuning and testing", f.image)
                continue
            out.append(VolumeSource(image=f.image, label=f.label if labelled else None, id=f.id))
    return out


def labelled_subset(pool: list[str], n: int, seed: int) -> list[str]:
    """``n`` patients of ``pool`` for ``seed``: the first ``n`` of a seeded permutation (nested:
    the 1-patient subset is inside the 2-patient one, which is inside the 8-patient one)."""
    if n > len(pool):
        raise ConfigError(
            "labelled", None, f"asked for {n} labelled patients, pool has {len(pool)}"
        )
    order = np.random.default_rng(1000 + seed).permutation(len(pool))
    return [sorted(pool)[i] for i in order[:n]]


class _Data:
    """The dataset resolved: frames by patient and the split checked against the disk."""

    def __init__(self, cfg: FewLabelEvalConfig, data_root: Path | None) -> None:
        d = cfg.dataset
        root = data_path(d.root, data_root, must_exist=False)  # find_acdc names what is missing
        frames = find_acdc(root)
        self.by_patient: dict[str, list[AcdcFrame]] = {}
        for f in frames:
            self.by_patient.setdefault(f.patient, []).append(f)
        self.split = load_patient_split(d.split, patients(frames))
        labelled_pool = [p for p in self.split["train"] if self.by_patient[p][0].label is not None]
        skipped = sorted(set(self.split["train"]) - set(labelled_pool))
        if skipped:
            log.warning(
                "%d training patients have no label: pretraining only (%s)",
                len(skipped),
                ", ".join(skipped[:5]),
            )
        self.pool = labelled_pool
        self.root = root
        self.cfg = d

    def pretrain_sources(self) -> list[VolumeSource]:
        ids = [*self.split["train"], *self.split["val"]]  # never a test patient
        return _frames_of(self.by_patient, ids, "all", labelled=False)

    def val_sources(self) -> list[VolumeSource]:
        return _frames_of(self.by_patient, self.split["val"], self.cfg.val_frames, labelled=True)

    def test_sources(self) -> list[VolumeSource]:
        return _frames_of(self.by_patient, self.split["test"], self.cfg.test_frames, labelled=True)

    def train_sources(self, ids: list[str]) -> list[VolumeSource]:
        return _frames_of(self.by_patient, ids, self.cfg.labelled_frames, labelled=True)


def _pretrain_plan(
    cfg: FewLabelEvalConfig, method: MethodConfig, data: _Data, root: Path
) -> tuple[VolumePretrainConfig, Path, Path] | None:
    """The pretraining config of ``method``, its folder, and the folder where the global stage
    of its loss and settings is published for "+ local" methods; None without pretraining."""
    if method.global_loss == "none" and not method.local:
        return None
    pre = cfg.pretrain.model_copy(deep=True)
    pre.data = pre.data.model_copy(update={"volumes": data.pretrain_sources(), "root": None})
    pre.train = pre.train.model_copy(update={"seed": cfg.pretrain_seed})
    pre.global_stage = pre.global_stage.model_copy(update={"loss": method.global_loss})
    pre.local_stage = pre.local_stage.model_copy(update={"enabled": method.local})
    exclude: dict[str, Any] = {"name": True, "out_dir": True}
    if pre.local_stage.loss == "local":  # the default, from before losses were chosen by name:
        exclude["local_stage"] = {"loss"}  # left out so earlier runs keep their folders
    key = pre.model_dump(mode="json", exclude=exclude)
    global_key = {**key, "local_stage": None}
    out = root / "pretrain" / f"{slug(method.name)}_{settings_hash(key)}"
    twin = root / "pretrain" / f"global-{method.global_loss}_{settings_hash(global_key)}"
    return pre, out, twin


def _pretrain(
    cfg: FewLabelEvalConfig, method: MethodConfig, data: _Data, root: Path
) -> Path | None:
    plan = _pretrain_plan(cfg, method, data, root)
    if plan is None:
        return None
    pre, out, twin = plan
    weights = out / "pretrained.pt"
    if weights.is_file():
        return weights
    # a "+ local" method reuses the global stage of the same loss and settings when present
    if method.local and (twin / "global").is_dir() and not (out / "global").exists():
        shutil.copytree(twin / "global", out / "global")
    pre.name = f"{method.name} ({cfg.name})"
    pre.out_dir = out
    log.info("pretraining %s on %d volumes", method.name, len(pre.data.volumes))
    run_pretrain_volume(pre)
    if not method.local:  # publish the global stage for a "+ local" method to reuse
        try:
            if not twin.exists():
                shutil.copytree(out / "global", twin / "global")
        except FileExistsError:  # a method with the same loss, run beside this one, was first
            pass
    return weights


def _schedule_pretraining(
    cfg: FewLabelEvalConfig, data: _Data, root: Path
) -> tuple[dict[str, Path | None], list[tuple[Any, ...]], list[list[int]], dict[str, int]]:
    """Weights of every method, and the pretraining tasks still to run.

    Returns ``(weights, tasks, after, task_of)``: the global-only methods' tasks come first,
    then the "+ local" ones, each waiting for the global-only method of its loss (whose global
    stage it reuses); ``task_of`` maps a method to the index of its task. Methods whose weights
    are already there get no task.
    """
    weights: dict[str, Path | None] = {}
    tasks: list[tuple[Any, ...]] = []
    after: list[list[int]] = []
    task_of: dict[str, int] = {}
    for local in (False, True):
        for method in (m for m in cfg.methods if m.local == local):
            plan = _pretrain_plan(cfg, method, data, root)
            weights[method.name] = None if plan is None else plan[1] / "pretrained.pt"
            if plan is None or plan[1].joinpath("pretrained.pt").is_file():
                continue
            twins = [
                task_of[m.name]
                for m in cfg.methods
                if local
                and not m.local
                and m.global_loss == method.global_loss
                and m.name in task_of
            ]
            task_of[method.name] = len(tasks)
            tasks.append(("pretrain", cfg, method, data, root))
            after.append(twins[:1])
    return weights, tasks, after, task_of


def _task(kind: str, *args: Any) -> Any:
    """One task of the protocol, in a worker or here: ``"pretrain"`` or ``"finetune"``."""
    return _pretrain(*args) if kind == "pretrain" else _finetune(*args)


def _finetune(
    cfg: FewLabelEvalConfig,
    method: str,
    n: int,
    seed: int,
    ids: list[str],
    weights: Path | None,
    data: _Data,
    root: Path,
) -> RunRow:
    ft = cfg.finetune.model_copy(deep=True)
    ft.data = ft.data.model_copy(
        update={
            "root": None,
            "train": data.train_sources(ids),
            "val": data.val_sources(),
            "test": data.test_sources(),
            "classes": dict(data.cfg.classes),
        }
    )
    ft.init = str(weights) if weights is not None else "random"
    ft.train = ft.train.model_copy(update={"seed": seed})
    ft_exclude: dict[str, Any] = {"name": True, "out_dir": True}
    if ft.early_stopping.min_steps == 0:  # the default, from before it existed: earlier runs
        ft_exclude["early_stopping"] = {"min_steps"}  # keep their folders
    key = ft.model_dump(mode="json", exclude=ft_exclude)
    out = root / "finetune" / slug(method) / f"n{n}_seed{seed}_{settings_hash(key)}"
    done = out / "metrics.json"
    if not done.is_file():
        ft.name = f"{method} n={n} seed {seed}"
        ft.out_dir = out
        tic = time.perf_counter()
        run_finetune_seg(ft)
        saved = json.loads(done.read_text())
        saved["seconds"] = time.perf_counter() - tic
        saved["patients"] = ids
        done.write_text(json.dumps(saved, indent=2, default=str) + "\n")
        fresh = True
    else:
        saved = json.loads(done.read_text())
        fresh = False
    return RunRow(
        method,
        n,
        seed,
        float(saved["mean_dice"]),
        {k: float(v) for k, v in saved["class_dice"].items()},
        {k: float(v) for k, v in saved.get("class_hd95", {}).items()},
        int(saved.get("steps", 0)),
        saved.get("best_step"),
        float(saved.get("seconds", math.nan)),
        fresh,
        list(saved.get("patients", ids)),
        out,
    )


def run_few_label_eval(
    cfg: FewLabelEvalConfig,
    *,
    workspace: Path | None = None,
    data_root: Path | None = None,
    readme: Path | None = None,
) -> tuple[list[RunRow], str]:
    """Run every (method, labelled count, seed) and the benchmark; returns rows and tables."""
    if not cfg.methods:
        raise ConfigError("methods", None, "no methods to compare")
    if readme is not None:  # before hours of training, not after
        check_readme(readme, (README_START, README_END))
    root = (
        Path(cfg.out_dir)
        if cfg.out_dir
        else stage_dir(workspace or workspace_root(), "eval", cfg.name)
    )
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root)
    data = _Data(cfg, data_root)
    if max(cfg.labelled) > len(data.pool):
        raise ConfigError(
            "labelled",
            None,
            f"{max(cfg.labelled)} labelled patients asked, pool has {len(data.pool)}",
        )
    log.info(
        "%s: %d pretraining volumes, %d training-pool / %d val / %d test patients",
        data.root,
        len(data.pretrain_sources()),
        len(data.pool),
        len(data.split["val"]),
        len(data.split["test"]),
    )
    unused = sorted(set(cfg.seeds_by_count) - set(cfg.labelled))
    if unused:
        log.warning(
            "seeds_by_count: labelled counts %s are not in labelled %s; not run",
            unused,
            cfg.labelled,
        )
    tic = time.perf_counter()
    weights, tasks, after, task_of = _schedule_pretraining(cfg, data, root)
    first_run = len(tasks)
    # fewest labels first, all methods of a seed together: an interrupted run has left
    # complete paired comparisons for the smallest counts (finished runs are reused on re-run).
    # A run waits only for its own method's pretraining: random init and the benchmark start
    # on a free worker while pretraining stages still run.
    for n in cfg.labelled:
        for seed in cfg.seeds_for(n):
            ids = labelled_subset(data.pool, n, seed)
            for method in cfg.methods:
                task = (cfg, method.name, n, seed, ids, weights[method.name], data, root)
                tasks.append(("finetune", *task))
                after.append([task_of[method.name]] if method.name in task_of else [])
    if cfg.benchmark:
        n_all = len(data.pool)
        for seed in cfg.seeds:
            tasks.append(
                ("finetune", cfg, BENCHMARK, n_all, seed, list(data.pool), None, data, root)
            )
            after.append([])

    def done(i: int, result: Any) -> None:
        if i < first_run:
            log.info("pretrained %s: %s", tasks[i][2].name, result)
            return
        row: RunRow = result
        log.info(
            "%s | n=%d | seed %d: mean Dice %.3f (%d steps)",
            row.method,
            row.labelled,
            row.seed,
            row.mean_dice,
            row.steps,
        )

    rows: list[RunRow] = run_tasks(_task, tasks, jobs=cfg.jobs, on_done=done, after=after)[
        first_run:
    ]
    minutes = (time.perf_counter() - tic) / 60
    names = list(cfg.dataset.classes)
    tables = results_tables(rows, [m.name for m in cfg.methods], cfg.labelled, names)
    (root / "results.md").write_text(tables)
    _write_csv(rows, names, root / "results.csv")
    _plot_results(rows, [m.name for m in cfg.methods], cfg.labelled, root / "results.png")
    plot_pretrain_curves(root / "pretrain", root / "pretrain_curves.png")
    plot_validation_curves(rows, [m.name for m in cfg.methods], root / "validation_curves.png")
    if readme is not None:
        fresh = sum(r.fresh for r in rows)
        note = (
            f"Produced by `medcl eval few-label` (seeds {cfg.seeds_text()}): {fresh} of "
            f"{len(rows)} fine-tuning runs computed by this invocation in {minutes:.1f} min, "
            "the rest reused from earlier invocations with the same settings; per-run Dice, "
            "HD95 and steps in `results.csv`."
        )
        update_readme(readme, tables, note, (README_START, README_END))
    return rows, tables


def results_tables(
    rows: list[RunRow], methods: list[str], counts: list[int], names: list[str]
) -> str:
    """Mean Dice with 95% intervals, per-structure Dice, and paired differences vs random init."""
    bench = [r.mean_dice for r in rows if r.method == BENCHMARK]
    bench_mean = float(np.mean(bench)) if bench else math.nan
    head = "| method | " + " | ".join(f"{n} labelled" for n in counts) + " |"
    out = [
        "Mean Dice over structures on the test patients (mean, 95% interval over seeds):",
        "",
        head,
        "|" + " --- |" * (len(counts) + 1),
    ]
    for m in methods:
        cells = []
        for n in counts:
            vals = [r.mean_dice for r in rows if r.method == m and r.labelled == n]
            cell = mean_interval(vals)
            if vals and math.isfinite(bench_mean) and bench_mean > 0:
                cell += f"; {np.mean(vals) / bench_mean:.0%} of benchmark"
            cells.append(cell)
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    if bench:
        n_all = next(r.labelled for r in rows if r.method == BENCHMARK)
        out.append(
            f"| {BENCHMARK}, {n_all} labelled | "
            + mean_interval(bench)
            + " |"
            + " |" * (len(counts) - 1)
        )
    base = methods[0]
    out += [
        "",
        f"Paired difference in mean Dice against {base} (same labelled volumes and seed; "
        "mean, 95% interval):",
        "",
        head,
        "|" + " --- |" * (len(counts) + 1),
    ]
    for m in methods[1:]:
        cells = []
        for n in counts:
            pairs = _pairs(rows, m, base, n)
            cells.append(paired_interval([a - b for a, b in pairs]))
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Dice per structure (mean over seeds):",
        "",
        "| method | labelled | " + " | ".join(names) + " | steps (mean) |",
        "|" + " --- |" * (len(names) + 3),
    ]
    for m in [*methods, BENCHMARK]:
        for n in sorted({r.labelled for r in rows if r.method == m}):
            sel = [r for r in rows if r.method == m and r.labelled == n]
            per = [f"{np.nanmean([r.class_dice.get(c, math.nan) for r in sel]):.3f}" for c in names]
            steps = np.mean([r.steps for r in sel])
            out.append(f"| {m} | {n} | " + " | ".join(per) + f" | {steps:.0f} |")
    return "\n".join(out) + "\n"


def _pairs(rows: list[RunRow], a: str, b: str, n: int) -> list[tuple[float, float]]:
    other = {r.seed: r.mean_dice for r in rows if r.method == b and r.labelled == n}
    return [
        (r.mean_dice, other[r.seed])
        for r in rows
        if r.method == a and r.labelled == n and r.seed in other
    ]


def _write_csv(rows: list[RunRow], names: list[str], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "method",
                "labelled",
                "seed",
                "mean_dice",
                *[f"dice_{n}" for n in names],
                *[f"hd95_{n}" for n in names],
                "steps",
                "best_step",
                "seconds",
                "patients",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.method,
                    r.labelled,
                    r.seed,
                    f"{r.mean_dice:.4f}",
                    *[f"{r.class_dice.get(n, math.nan):.4f}" for n in names],
                    *[f"{r.class_hd95.get(n, math.nan):.2f}" for n in names],
                    r.steps,
                    r.best_step,
                    f"{r.seconds:.1f}",
                    " ".join(r.patients) if len(r.patients) <= 8 else f"{len(r.patients)} patients",
                ]
            )


def _plot_results(rows: list[RunRow], methods: list[str], counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(methods) * len(counts) / 2 + 3, 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        for j, n in enumerate(counts):
            vals = [r.mean_dice for r in rows if r.method == m and r.labelled == n]
            x = j + (i - (len(methods) - 1) / 2) * width
            ax.bar(
                x,
                float(np.mean(vals)) if vals else 0,
                width,
                color=f"C{i}",
                alpha=0.6,
                label=m if j == 0 else None,
            )
            ax.scatter([x] * len(vals), vals, color="k", s=8, zorder=3)
    bench = [r.mean_dice for r in rows if r.method == BENCHMARK]
    if bench:
        ax.axhline(float(np.mean(bench)), color="k", ls="--", lw=1, label="benchmark")
    ax.set_xticks(range(len(counts)), [f"{n} labelled" for n in counts])
    ax.set_ylabel("mean Dice (test patients)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_validation_curve(run_dir: Path) -> dict[int, float]:
    """``step -> validation Dice`` of one fine-tuning run (empty without ``validation.csv``)."""
    file = run_dir / "validation.csv"
    if not file.is_file():
        return {}
    with file.open(newline="") as fh:
        return {int(r["step"]): float(r["score"]) for r in csv.DictReader(fh)}


def plot_validation_curves(rows: list[RunRow], methods: list[str], path: Path) -> None:
    """Validation Dice against fine-tuning step, mean over seeds, one panel per labelled count.

    Shows whether a pretrained start is ahead early and whether random init catches up by the
    end of the budget (each run's curve ends where early stopping ended it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r.labelled for r in rows if r.method in methods})
    curves = {
        (r.method, r.labelled, r.seed): read_validation_curve(r.run_dir)
        for r in rows
        if r.method in methods and r.run_dir is not None
    }
    if not counts or not any(curves.values()):
        return
    fig, axes = plt.subplots(1, len(counts), figsize=(4.2 * len(counts), 3.6), squeeze=False)
    for ax, n in zip(axes[0], counts, strict=True):
        for i, m in enumerate(methods):
            runs = [c for (mm, nn, _), c in curves.items() if mm == m and nn == n and c]
            steps = sorted({s for c in runs for s in c})
            mean = [float(np.mean([c[s] for c in runs if s in c])) for s in steps]
            ax.plot(steps, mean, color=f"C{i}", lw=1.5, label=m)
        ax.set_title(f"{n} labelled")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation Dice (mean over seeds)")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pretrain_curves(pretrain_root: Path, path: Path) -> None:
    """Loss against step of every pretraining stage found under ``pretrain_root``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sorted(pretrain_root.glob("*/*/metrics.csv")) if pretrain_root.is_dir() else []
    curves = [c for c in curves if not c.parent.parent.name.startswith("global-")]
    if not curves:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for c in curves:
        steps, losses = [], []
        with c.open(newline="") as fh:
            for row in csv.DictReader(fh):
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
        ax = axes[0 if c.parent.name == "global" else 1]
        smooth, ema = [], losses[0] if losses else 0.0
        for value in losses:  # each logged loss is one batch's: show a moving average too
            ema = 0.8 * ema + 0.2 * value
            smooth.append(ema)
        label = c.parent.parent.name.rsplit("_", 1)[0]
        (line,) = ax.plot(steps, smooth, lw=1.5, label=f"{label} (moving average)")
        ax.plot(steps, losses, lw=0.5, alpha=0.3, color=line.get_color())
    for ax, title in zip(axes, ("global stage", "local stage"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # no method with a local stage
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_split_dataset(cfg: FewLabelEvalConfig, data_root: Path | None) -> None:
    """Resolve the dataset and split once (raises the clear errors of :class:`_Data`)."""
    try:
        _Data(cfg, data_root)
    except KeyError as exc:  # a patient with no frame at all
        raise InvalidInputError(cfg.dataset.split, f"patient {exc} has no frames") from None
