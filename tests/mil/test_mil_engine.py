"""`medcl mil train` on the engine: step checkpoints, exact resume, config check, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_mil_cli import _write_bags

from medcl.errors import InvalidInputError
from medcl.mil import engine_fit
from medcl.mil.runner import run_mil_train
from medcl.mil.train import MILTrainConfig, load_mil_model

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**kw: object) -> MILTrainConfig:
    base: dict[str, object] = {
        "aggregator": "abmil", "folds": 2, "epochs": 4, "patience": 0, "lr": 1e-2,
        "batch_size": 2, "ckpt_every": 1, "device": "cpu", "progress": False,
        "aggregator_kwargs": {"hidden_dim": 8, "dropout": 0.25},
    }  # fmt: skip
    return MILTrainConfig.model_validate({**base, **kw})


class _KilledError(Exception):
    pass


def _fold_state(run: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in (0, 1):
        model, _ = load_mil_model(run / f"fold_{k}" / "model.pt")
        out[f"w{k}"] = {n: p.detach().clone() for n, p in model.state_dict().items()}
        out[f"h{k}"] = json.loads((run / f"fold_{k}" / "metrics.json").read_text())["history"]
    return out


def test_kill_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _write_bags(tmp_path, n=12)
    whole = run_mil_train(manifest, _cfg(ckpt_every=2), out_dir=tmp_path / "whole")
    # step checkpoints, the early-stopping state and the best weights of each fold
    train_dir = whole.out_dir / "fold_0" / "train"
    assert len(list(train_dir.glob("ckpt_step*.pt"))) == 2  # keep_last
    assert len(json.loads((train_dir / "progress.json").read_text())["history"]) == 4

    calls = {"n": 0}
    real = engine_fit._BagStep.__call__

    def dying(self: engine_fit._BagStep, model: torch.nn.Module, batch: torch.Tensor) -> object:
        calls["n"] += 1
        if calls["n"] == 7:  # in fold 0, after a step checkpoint that is not an epoch end
            raise _KilledError
        return real(self, model, batch)

    monkeypatch.setattr(engine_fit._BagStep, "__call__", dying)
    with pytest.raises(_KilledError):
        run_mil_train(manifest, _cfg(ckpt_every=2), out_dir=tmp_path / "killed")
    assert not (tmp_path / "killed" / "fold_0" / "model.pt").exists()
    monkeypatch.setattr(engine_fit._BagStep, "__call__", real)
    resumed = run_mil_train(manifest, _cfg(ckpt_every=2), out_dir=tmp_path / "killed")
    a, b = _fold_state(whole.out_dir), _fold_state(resumed.out_dir)
    for k in (0, 1):
        assert a[f"h{k}"] == b[f"h{k}"]
        wa, wb = a[f"w{k}"], b[f"w{k}"]
        assert isinstance(wa, dict) and isinstance(wb, dict)
        for name, value in wa.items():
            assert torch.equal(value, wb[name]), name
    assert whole.cv.mean == resumed.cv.mean


def test_a_run_folder_with_other_settings_is_refused(tmp_path: Path) -> None:
    manifest = _write_bags(tmp_path)
    run_mil_train(manifest, _cfg(epochs=1, folds=1), out_dir=tmp_path / "run")
    with pytest.raises(InvalidInputError, match=r"config.yaml: .*differs in: epochs, lr\)"):
        run_mil_train(manifest, _cfg(epochs=2, folds=1, lr=0.5), out_dir=tmp_path / "run")


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medcl", "mil", "train", *args]  # fmt: skip
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("aggregator", ["abmil", "ins"])
def test_two_processes_under_torchrun(tmp_path: Path, aggregator: str) -> None:
    manifest = _write_bags(tmp_path, n=12)
    out = tmp_path / "run"
    args = ["--bags", str(manifest), "--out", str(out), "--folds", "2", "--epochs", "2",
            "--aggregator", aggregator, "--device", "cpu",
            "--set", "aggregator_kwargs.hidden_dim=8", "--set", "progress=false"]  # fmt: skip
    result = _torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"{aggregator} on 2 classes") == 1  # rank 0 prints
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["folds"]) == 2
    for k in (0, 1):
        fold = out / f"fold_{k}"
        assert (fold / "model.pt").is_file() and (fold / "predictions.csv").is_file()
        if aggregator == "abmil":  # DDP on the engine: rank 0's step checkpoints hold 2 ranks
            ckpts = sorted((fold / "train").glob("ckpt_step*.pt"))
            assert ckpts and len(torch.load(ckpts[-1], weights_only=True)["rng"]) == 2
    # a re-run reuses every fold (nothing trained again) and gives the same summary
    again = _torchrun(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_bad_inputs_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import h5py
    import numpy as np

    from medcl.cli import main

    manifest = _write_bags(tmp_path)
    base = ["mil", "train", "--out", str(tmp_path / "o"), "--epochs", "1", "--device", "cpu"]

    def fails(extra: list[str], *expected: str) -> None:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("medcl: error:"), err
        for text in expected:
            assert text in err, err

    # a label outside the class map
    fails(["--bags", str(manifest), "--set", "class_names=[benign,other]"],
          "manifest.csv", "labels ['tumour'] are not in class_names")  # fmt: skip
    # a bag file without a features dataset
    with h5py.File(tmp_path / "bags" / "nofeat.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), dtype=np.int64))
    nofeat = tmp_path / "nofeat.csv"
    nofeat.write_text("bag,label\nbags/nofeat.h5,a\nbags/slide0.h5,b\n")
    fails(["--bags", str(nofeat)], "nofeat.h5", "no feature dataset")
    # bags of different feature dimensions
    with h5py.File(tmp_path / "bags" / "wide.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((3, 7), dtype=np.float32))
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("bag,label\nbags/wide.h5,a\nbags/slide0.h5,b\n")
    fails(["--bags", str(mixed)], "mixed.csv", "different feature sizes [4, 7]")
    # more folds than patients of a class: 4 patients, only P0 and P1 keep their tumour bag
    rows = manifest.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join([rows[0], *rows[1:5], rows[5], rows[7]]) + "\n")
    fails(["--bags", str(short), "--folds", "3"], "short.csv",
          "3 folds need at least 3 patients of every class; class 'tumour' has 2")  # fmt: skip
