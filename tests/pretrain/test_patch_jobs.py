"""`medcl pretrain patch` and `medcl eval probe`: smoke runs, round trip, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.cli import main
from medcl.models.encoders import create_encoder

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke" / "pretrain_patch.yaml"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour classes of 16 noisy 40x40 images each."""
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(0)
    for cls, colour in {
        "red": (200, 60, 60),
        "green": (60, 180, 80),
        "blue": (60, 80, 200),
    }.items():
        (root / "images" / cls).mkdir(parents=True)
        for i in range(16):
            noise = rng.integers(-50, 50, size=(40, 40, 3))
            arr = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "images" / cls / f"{cls}_{i:02d}.png")
    return root


@pytest.mark.slow
def test_pretrain_patch_writes_a_loadable_encoder(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "patch",
                "--config",
                str(SMOKE),
                "--data-root",
                str(image_root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = (out / "train" / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4]
    enc = create_encoder(f"medcl:{out / 'encoder.pt'}")
    assert enc.embed_dim == 512 and enc.spec.size == (32, 32)
    torch.manual_seed(0)
    fresh = create_encoder("timm:resnet18")
    trained = dict(enc.named_parameters())
    changed = [k for k, p in fresh.named_parameters() if not torch.equal(p, trained[k])]
    assert len(changed) > 0.9 * len(trained)  # the weights really loaded, not a fresh init
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.slow
def test_supcon_uses_labels_and_probe_reports(
    image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "supcon"
    assert (
        main(
            [
                "pretrain",
                "patch",
                "--config",
                str(SMOKE),
                "--data-root",
                str(image_root),
                "--out",
                str(out),
                "--set",
                "loss=supcon",
                "--set",
                "train.max_steps=2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    probe_out = tmp_path / "probe"
    args = [
        "eval",
        "probe",
        "--data-root",
        str(image_root),
        "--out",
        str(probe_out),
        "--encoder",
        "timm:resnet18",
        "--encoder",
        f"medcl:{out / 'encoder.pt'}",
        "--set",
        "data.path=images",
        "--set",
        "data.format=class_folders",
        "--set",
        "data.test_size=0.25",
        "--set",
        "data.num_workers=0",
        "--set",
        "image_size=32",
        "--set",
        "k=5",
    ]
    assert main(args) == 0
    rows = json.loads((probe_out / "probe.json").read_text())
    assert [r["encoder"] for r in rows] == ["timm:resnet18", f"medcl:{out / 'encoder.pt'}"]
    for r in rows:
        assert r["n_train"] + r["n_test"] == 48 and r["n_test"] > 0
        # colour classes are trivially separable for any encoder through a linear probe
        assert r["linear_balanced_accuracy"] > 0.8


@pytest.mark.slow
def test_resume_after_kill_continues_from_saved_step(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "medcl",
        "pretrain",
        "patch",
        "--config",
        str(SMOKE),
        "--data-root",
        str(image_root),
        "--out",
        str(out),
        "--set",
        "train.max_steps=400",
        "--set",
        "train.ckpt_every=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((out / "train").glob("ckpt_step*4.pt")):
            time.sleep(0.2)
        assert list((out / "train").glob("ckpt_step*4.pt")), "no checkpoint written in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    saved = max(
        int(p.stem.removeprefix("ckpt_step")) for p in (out / "train").glob("ckpt_step*.pt")
    )
    assert saved >= 4
    from medcl.config import load_config
    from medcl.pretrain.patch import PatchPretrainConfig, run_pretrain_patch

    cfg = load_config(PatchPretrainConfig, SMOKE, ["train.max_steps=" + str(saved + 2)])
    cfg.out_dir = out
    res = run_pretrain_patch(cfg, data_root=image_root)
    steps = [
        int(r.split(",")[0]) for r in (out / "train" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 2  # no step logged twice
    assert (out / "encoder.pt").is_file() and np.isfinite(res.last_loss)


def test_supcon_on_slide_tiles_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "pretrain",
        "patch",
        "--config",
        str(SMOKE),
        "--out",
        str(tmp_path),
        "--set",
        "source=slide",
        "--set",
        "loss=supcon",
        "--set",
        "data.path=x.svs",
    ]
    assert main(args) == 2
    assert "slide tiles have no labels" in capsys.readouterr().err


@pytest.mark.slow
def test_pretrain_on_slide_tiles(tmp_path: Path) -> None:
    from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff

    image, _ = synthetic_tissue_image(768, 1024, seed=1, n_blobs=4)
    slide = write_pyramidal_tiff(tmp_path / "s.tiff", image, mpp=0.5, levels=2)
    out = tmp_path / "slide_run"
    args = [
        "pretrain",
        "patch",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        "--set",
        "source=slide",
        "--set",
        f"data.path={slide}",
        "--set",
        "views=pathology",
        "--set",
        "data.slide={tile: 64, mpp: 1.0, min_tissue: 0.5}",
        "--set",
        "train.max_steps=2",
    ]
    assert main(args) == 0
    assert (out / "encoder.pt").is_file()


def test_another_loss_never_resumes_the_run(
    image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = ["pretrain", "patch", "--config", str(SMOKE), "--data-root", str(image_root)]
    base += ["--out", str(out), "--set", "train.max_steps=2"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--set", "loss=supcon"]) == 2
    err = capsys.readouterr().err
    ckpt = out / "train" / "ckpt_step00000002.pt"
    assert f"{ckpt}: was trained with other settings (loss: 'ntxent' stored, 'supcon' now)" in err
    assert "give this run another name or output folder" in err
    assert main([*base, "--set", "temperature=0.5", "--set", "image_size=40"]) == 2
    err = capsys.readouterr().err
    assert "image_size: 32 stored, 40 now; temperature: 0.2 stored, 0.5 now" in err
    # logging or saving at other intervals, with other workers, is the same run: it resumes
    same = [*base, "--set", "train.log_every=2", "--set", "data.num_workers=1"]
    assert main(same) == 0  # finished: resumed at step 2 and not trained again
    steps = [int(r.split(",")[0]) for r in (out / "train" / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2]
