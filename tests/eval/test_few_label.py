"""`medcl eval few-label` and `medcl eval seg` end to end on a synthetic ACDC folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.cli import main
from medcl.config import load_config
from medcl.eval.few_label import (
    FewLabelEvalConfig,
    _Data,
    _schedule_pretraining,
    read_validation_curve,
)
from medcl.io.datasets.acdc import write_patient_split
from medcl.testing.acdc import write_synthetic_acdc

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke" / "few_label_acdc.yaml"
MARKERS = "<!-- few-label:start -->\nold\n<!-- few-label:end -->\n"


def _dataset(root: Path) -> Path:
    write_synthetic_acdc(root / "acdc", list(range(1, 8)), size=40, depth=6)
    split = {
        "train": ["patient001", "patient002", "patient003", "patient004"],
        "val": ["patient005"],
        "test": ["patient006", "patient007"],
    }
    write_patient_split(split, root / "split.yaml")
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "few-label",
        "--config",
        str(SMOKE),
        "--data-root",
        str(root),
        "--set",
        f"dataset.split={root / 'split.yaml'}",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = _dataset(tmp_path_factory.mktemp("fewlabel"))
    out = root / "eval"
    readme = root / "README.md"
    readme.write_text("# x\n" + MARKERS)
    assert main([*_args(root, out), "--readme", str(readme)]) == 0
    return root, out, readme


@pytest.mark.slow
def test_protocol_writes_paired_tables_and_every_run(protocol: tuple[Path, Path, Path]) -> None:
    _, out, readme = protocol
    rows = list(csv.DictReader((out / "results.csv").open()))
    # 3 methods x 2 labelled counts x 2 seeds, plus the benchmark on all 4 pool patients x 2 seeds
    assert len(rows) == 14
    assert {(r["method"], r["labelled"]) for r in rows} >= {
        ("random init", "1"),
        ("GD- + local", "2"),
        ("benchmark (all training patients)", "4"),
    }
    for r in rows:
        assert 0.0 <= float(r["mean_dice"]) <= 1.0
        assert int(r["steps"]) <= 6
    # the same labelled patients for both methods of a seed (paired), nested across counts
    by = {(r["method"], r["labelled"], r["seed"]): r["patients"] for r in rows}
    assert by[("random init", "1", "0")] == by[("GD- + local", "1", "0")]
    assert by[("random init", "1", "1")] in by[("random init", "2", "1")]
    text = readme.read_text()
    assert "Paired difference in mean Dice against random init" in text
    assert "| GD- + local | " in text and "old" not in text
    assert (out / "pretrain_curves.png").is_file() and (out / "results.png").is_file()
    pretrain = [p.name for p in (out / "pretrain").iterdir()]
    assert any(p.startswith("GD-_+_local_") for p in pretrain)
    local = next((out / "pretrain").glob("GD-_+_local_*/local/metrics.csv"))
    assert local.read_text().splitlines()[-1].startswith("2,")
    # "+ local" resumed the global stage GD- had finished (copied, not retrained)
    own = next((out / "pretrain").glob("GD-_+_local_*/global/metrics.csv")).read_text()
    twin = next((out / "pretrain").glob("GD-_[0-9a-f]*/global/metrics.csv")).read_text()
    assert own == twin
    model = next((out / "finetune" / "random_init").glob("n1_seed0_*/model.pt"))
    assert model.is_file()
    # the validation curve of each run (what validation_curves.png plots), steps within budget
    curve = read_validation_curve(model.parent)
    assert curve and max(curve) <= 6 and all(0.0 <= v <= 1.0 for v in curve.values())
    assert read_validation_curve(out / "no-such-run") == {}
    assert (out / "validation_curves.png").is_file()


@pytest.mark.slow
def test_rerun_reuses_and_a_changed_setting_starts_new_runs(
    protocol: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, out, readme = protocol
    assert main([*_args(root, out), "--readme", str(readme)]) == 0
    assert "0 of 14 fine-tuning runs computed by this invocation" in readme.read_text()
    before = sorted(p.name for p in (out / "finetune" / "random_init").iterdir())
    args = _args(
        root,
        out,
        "--set",
        "finetune.lr=0.002",
        "--set",
        "methods=[{name: random init, global_loss: none}]",
        "--set",
        "seeds=[0]",
        "--set",
        "labelled=[1]",
        "--set",
        "seeds_by_count={1: [0, 3], 8: [0]}",
        "--set",
        "benchmark=false",
        "--readme",
        str(readme),
    )
    assert main(args) == 0
    after = sorted(p.name for p in (out / "finetune" / "random_init").iterdir())
    # new folders (the old runs are not reused), seeds 0 and 3 for the 1-labelled count;
    # the count 8 is not in `labelled` and is not run
    assert len(after) == len(before) + 2
    assert {p.split("_")[1] for p in set(after) - set(before)} == {"seed0", "seed3"}
    assert "(seeds [0]; 1 labelled: [0, 3]): 2 of 2 fine-tuning runs" in readme.read_text()


@pytest.mark.slow
def test_jobs_run_side_by_side_and_reuse_the_same_runs(
    protocol: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, out, readme = protocol
    # two jobs, the same settings: every run reused (run folders do not depend on jobs)
    assert main([*_args(root, out), "--set", "jobs=2", "--readme", str(readme)]) == 0
    assert "0 of 14 fine-tuning runs computed by this invocation" in readme.read_text()
    # fresh pretraining and fine-tuning in two spawned workers
    fresh, readme2 = tmp_path / "fresh", tmp_path / "README.md"
    readme2.write_text(MARKERS)
    methods = "methods=[{name: random init, global_loss: none}, {name: GD-, global_loss: gd-}]"
    extra = (
        "--set",
        "jobs=2",
        "--set",
        methods,
        "--set",
        "labelled=[1]",
        "--set",
        "benchmark=false",
    )
    assert main([*_args(root, fresh, *extra), "--readme", str(readme2)]) == 0
    assert "4 of 4 fine-tuning runs computed by this invocation" in readme2.read_text()
    rows = list(csv.DictReader((fresh / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("random init", "0"),
        ("GD-", "0"),
        ("random init", "1"),
        ("GD-", "1"),
    ]  # in task order, whichever worker finished first
    assert all(0.0 <= float(r["mean_dice"]) <= 1.0 for r in rows)
    assert len(list((fresh / "pretrain").glob("GD-_*/pretrained.pt"))) == 1


def test_local_methods_wait_for_the_global_stage_of_their_loss_and_cached_ones_do_not_run(
    tmp_path: Path,
) -> None:
    root = _dataset(tmp_path)
    methods = (
        "methods=[{name: random init, global_loss: none}, {name: GR, global_loss: gr},"
        " {name: GD-, global_loss: gd-}, {name: GD- + local, global_loss: gd-, local: true},"
        " {name: GD + local, global_loss: gd, local: true}]"
    )
    cfg = load_config(FewLabelEvalConfig, SMOKE, [f"dataset.split={root / 'split.yaml'}", methods])
    data, out = _Data(cfg, root), tmp_path / "eval"
    weights, tasks, after, task_of = _schedule_pretraining(cfg, data, out)
    assert [t[2].name for t in tasks] == ["GR", "GD-", "GD- + local", "GD + local"]
    # GD- + local reuses GD-'s global stage; GD + local has no global-only twin and runs its own
    assert after == [[], [], [1], []]
    assert task_of == {"GR": 0, "GD-": 1, "GD- + local": 2, "GD + local": 3}
    assert weights["random init"] is None
    assert {w.parent.parent for w in weights.values() if w is not None} == {out / "pretrain"}
    assert len({w for w in weights.values() if w is not None}) == 4
    # finished pretraining is not scheduled again, and nothing waits for it
    gdm = weights["GD-"]
    assert gdm is not None
    gdm.parent.mkdir(parents=True)
    gdm.write_bytes(b"")
    weights2, tasks2, after2, task_of2 = _schedule_pretraining(cfg, data, out)
    assert weights2 == weights
    assert [t[2].name for t in tasks2] == ["GR", "GD- + local", "GD + local"]
    assert after2 == [[], [], []] and "GD-" not in task_of2


def test_seeds_by_count_overrides_seeds_for_its_counts() -> None:
    cfg = FewLabelEvalConfig(seeds=[0, 1, 2], labelled=[1, 2, 8], seeds_by_count={1: [0, 1, 2, 3]})
    assert cfg.seeds_for(1) == [0, 1, 2, 3]
    assert cfg.seeds_for(2) == cfg.seeds_for(8) == [0, 1, 2]
    assert cfg.seeds_text() == "[0, 1, 2]; 1 labelled: [0, 1, 2, 3]"
    assert FewLabelEvalConfig(seeds=[5]).seeds_text() == "[5]"
    with pytest.raises(ValueError, match="every count needs at least one seed"):
        FewLabelEvalConfig(seeds_by_count={2: []})


@pytest.mark.slow
def test_eval_seg_scores_writes_masks_and_refuses_other_classes(
    protocol: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out, _ = protocol
    model = next((out / "finetune" / "random_init").glob("n2_seed0_*/model.pt"))
    dest = tmp_path / "seg"
    assert (
        main(
            ["eval", "seg", "--model", str(model), "--data", str(root / "acdc"), "--out", str(dest)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| structure | Dice | HD95 (voxels) |" in printed
    rows = list(csv.DictReader((dest / "scores.csv").open()))
    assert len(rows) == 7 * 2 * 3 and {r["structure"] for r in rows} == {"rv", "myocardium", "lv"}
    mask = nib.load(dest / "masks" / "patient006_frame02_pred.nii.gz")
    image = nib.load(root / "acdc" / "patient006" / "patient006_frame02.nii.gz")
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 3}
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["classes"] == {"rv": 1, "myocardium": 2, "lv": 3}
    # a label value the model does not know: refused, naming both sides
    other = tmp_path / "other"
    write_synthetic_acdc(other, [9], size=40, depth=6)
    gt = other / "patient009" / "patient009_frame01_gt.nii.gz"
    img = nib.load(gt)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(arr, img.affine), gt)
    assert main(["eval", "seg", "--model", str(model), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "classes do not match the labels: the model has rv=1, myocardium=2, lv=3" in err
    assert "4 (e.g. in patient009_frame01_gt.nii.gz)" in err and len(err.splitlines()) == 1
    pretrained = next((out / "pretrain").glob("GD-_+_local_*/pretrained.pt"))
    assert main(["eval", "seg", "--model", str(pretrained), "--data", str(root / "acdc")]) == 2
    assert "no class map" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_dataset_inputs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path)
    quick = [
        "--set",
        "seeds=[0]",
        "--set",
        "labelled=[1]",
        "--set",
        "benchmark=false",
        "--set",
        "methods=[{name: random init, global_loss: none}]",
    ]
    # a split naming a patient that is not there
    write_patient_split(
        {"train": ["patient001", "patient042"], "val": ["patient005"], "test": ["patient006"]},
        root / "split.yaml",
    )
    assert main(_args(root, tmp_path / "a", *quick)) == 2
    err = capsys.readouterr().err.strip()
    assert "split.yaml: 1 patient(s) named in the split are not in the data: patient042" in err
    write_patient_split(
        {"train": ["patient001", "patient002"], "val": ["patient005"], "test": ["patient006"]},
        root / "split.yaml",
    )
    # a training patient without _gt: used unlabelled only, logged, never a labelled volume
    for f in (root / "acdc" / "patient002").glob("*_gt.nii.gz"):
        f.unlink()
    assert main(_args(root, tmp_path / "b", *quick)) == 0
    err = capsys.readouterr().err
    assert "training patients have no label: pretraining only (patient002)" in err
    # a _gt of another shape
    gt = root / "acdc" / "patient001" / "patient001_frame01_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.uint8), np.eye(4)), gt)
    assert main(_args(root, tmp_path / "c", *quick)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("medcl: error: ") and "patient001_frame01_gt.nii.gz" in last


def test_a_readme_that_cannot_take_the_table_fails_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    missing = tmp_path / "nowhere" / "README.md"
    assert main([*_args(root, out), "--readme", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "no such file" in err and len(err.splitlines()) == 1
    no_markers = tmp_path / "README.md"
    no_markers.write_text("# a README without the table's markers\n")
    assert main([*_args(root, out), "--readme", str(no_markers)]) == 2
    assert "markers not found" in capsys.readouterr().err
    assert not list(out.glob("**/metrics.json"))  # nothing was trained
