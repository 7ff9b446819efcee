"""`medcl pretrain volume` and `medcl finetune seg` end to end on synthetic volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcl.cli import main
from medcl.testing.volumes import write_synthetic_volumes

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vols")
    write_synthetic_volumes(folder, (12, 16, 20), size=64)
    return folder


@pytest.fixture(scope="module")
def pretrained(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    args = [
        "pretrain",
        "volume",
        "--config",
        str(SMOKE / "pretrain_volume.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_pretrain_writes_weights_logs_and_config(pretrained: Path) -> None:
    weights = torch.load(pretrained / "pretrained.pt", weights_only=True)
    assert weights["arch"]["channels"] == [8, 16, 32, 64]
    assert weights["meta"]["method"] == "gd-+local"
    for stage, steps in (("global", 6), ("local", 4)):
        rows = (pretrained / stage / "metrics.csv").read_text().splitlines()
        assert rows[0].startswith("step,epoch,loss")
        assert int(rows[-1].split(",")[0]) == steps
        assert np.isfinite(float(rows[-1].split(",")[2]))
    assert (pretrained / "config.yaml").is_file()


@pytest.mark.slow
def test_rerun_resumes_and_keeps_weights(pretrained: Path, volumes: Path) -> None:
    before = torch.load(pretrained / "pretrained.pt", weights_only=True)["state_dict"]
    args = [
        "pretrain",
        "volume",
        "--config",
        str(SMOKE / "pretrain_volume.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(pretrained),
    ]
    assert main(args) == 0  # both stages find their last checkpoint: nothing is retrained
    after = torch.load(pretrained / "pretrained.pt", weights_only=True)["state_dict"]
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)


def _finetune_args(volumes: Path, init: str, out: Path) -> list[str]:
    """``medcl finetune seg`` on the smoke config."""
    config = str(SMOKE / "finetune_seg.yaml")
    data = ["--data-root", str(volumes)]
    return ["finetune", "seg", "--config", config, *data, "--init", init, "--out", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_finetune_predicts_masks_on_the_input_grid(
    init: str, pretrained: Path, volumes: Path, tmp_path: Path
) -> None:
    init_arg = str(pretrained / "pretrained.pt") if init == "pretrained" else "random"
    assert main(_finetune_args(volumes, init_arg, tmp_path)) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    assert [v["volume"] for v in metrics["volumes"]] == ["v1", "v0"]
    # the training volume is scored on its other slices only
    assert metrics["volumes"][1]["held_out_slices"] == 12 - 3
    if init == "pretrained":
        assert metrics["init"]["keys_loaded"] > 0
        assert metrics["init"]["parts"] == ["encoder", "decoder"]
    pred = nib.load(tmp_path / "predictions" / "v1_pred.nii.gz")
    image = nib.load(volumes / "v1.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}
    assert (tmp_path / "dice.csv").read_text().splitlines()[0] == "volume,class,dice"


def test_more_partitions_than_slices_is_a_clear_error(
    volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "pretrain",
        "volume",
        "--config",
        str(SMOKE / "pretrain_volume.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(tmp_path),
        "--set",
        "partitions=14",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "S=14 partitions but volume 'v0' has only 12 slices" in err


def test_label_with_unnamed_classes_is_a_clear_error(
    volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "finetune",
        "seg",
        "--config",
        str(SMOKE / "finetune_seg.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(tmp_path),
        "--set",
        "data.classes={sphere_a: 1}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "v0_seg.nii.gz: label map has values 2 that the config's classes do not name" in err


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_a_clear_error(
    pretrained: Path, volumes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "finetune",
        "seg",
        "--config",
        str(SMOKE / "finetune_seg.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(tmp_path),
        "--init",
        str(pretrained / "pretrained.pt"),
        "--set",
        "model.channels=[4, 8, 16, 32]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medcl: error: ") and "pretrained.pt" in err
    assert "channels" in err


@pytest.mark.slow
def test_pretrain_volume_under_torchrun_two_processes(volumes: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medcl",
        "pretrain",
        "volume",
        "--config",
        str(SMOKE / "pretrain_volume.yaml"),
        "--data-root",
        str(volumes),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("weights:") == 1  # only rank 0 reports
    weights = torch.load(out / "pretrained.pt", weights_only=True)
    assert weights["meta"]["method"] == "gd-+local"
    rows = (out / "global" / "metrics.csv").read_text().splitlines()
    assert int(rows[-1].split(",")[0]) == 6


@pytest.mark.slow
def test_finetune_with_the_same_seed_trains_the_same_weights(volumes: Path, tmp_path: Path) -> None:
    # augmentations included: MONAI's transforms are seeded from train.seed
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(_finetune_args(volumes, "random", out)) == 0
    a, b = (torch.load(out / "model.pt", weights_only=True)["state_dict"] for out in outs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    scores = [json.loads((out / "metrics.json").read_text())["mean_dice"] for out in outs]
    assert scores[0] == scores[1]
