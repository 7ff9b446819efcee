"""The ``wsi extract`` job: resume, failures, slide lookup, and two torchrun processes."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from medcl.cli.wsi_extract import add_extract_command
from medcl.errors import ConfigError, InvalidInputError
from medcl.io.slides import open_slide
from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff
from medcl.wsi.extract_job import ExtractConfig, build_encoder, run_extract_job
from medcl.wsi.features import extract_features
from medcl.wsi.jobs import TileJobConfig, run_tile_job

ENCODER = "open_clip:medcl-tiny-vit"
OUT = "features_open_clip_medcl-tiny-vit_px64_fp32_seed0_k"  # + digest of the other settings
REPO = Path(__file__).resolve().parents[2]


def _coords(path: Path, coords: list[list[int]]) -> None:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        ds.attrs.update({"patch_size": 64, "patch_level": 0, "read_size": 64})


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for seed, name in enumerate("abc"):
        image = synthetic_tissue_image(192, 192, seed=seed)[0]
        write_pyramidal_tiff(folder / f"{name}.tif", image, levels=1, tile=64, compression="zlib")
    (folder / "d.tif").write_bytes(b"II*\x00 this is not a slide")
    return folder


def _job(root: Path, with_bad: bool = True) -> Path:
    patches = root / "patches"
    patches.mkdir(parents=True)
    _coords(patches / "a.h5", [[0, 0], [64, 0], [0, 64], [64, 64], [128, 128]])
    _coords(patches / "b.h5", [[128, 0], [0, 128], [64, 128]])
    _coords(patches / "c.h5", [[x, y] for y in (0, 64, 128) for x in (0, 64)])
    if with_bad:
        _coords(patches / "d.h5", [[0, 0]])  # d.tif is corrupt
        _coords(patches / "e.h5", [])  # no tissue: an empty bag
    return root


def _out(job: Path) -> Path:
    """The job's only features folder (named by its settings)."""
    (found,) = [p for p in job.glob("features_*") if p.is_dir()]
    assert found.name.startswith(OUT)
    return found


def _status(path: Path) -> dict[str, tuple[str, str]]:
    with path.open(newline="") as fh:
        return {r["slide"]: (r["state"], r["n_tiles"]) for r in csv.DictReader(fh)}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_extract_command(parser.add_subparsers())
    args = parser.parse_args(["extract", *argv])
    return int(args.func(args))


def test_job_records_failures_resumes_and_skips(
    slides: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path / "job")
    argv = ["--job", str(job), "--encoder", ENCODER, "--slides", str(slides)]
    argv += ["--device", "cpu", "--num-workers", "0", "--batch-size", "4"]
    assert _cli(argv) == 1  # one slide failed, the others finished
    out = _out(job)
    assert _status(out / "status.csv") == {
        "a": ("ok", "5"), "b": ("ok", "3"), "c": ("ok", "6"),
        "d": ("failed", "0"), "e": ("empty", "0"),
    }  # fmt: skip
    summary = yaml.safe_load(capsys.readouterr().out)
    assert summary["tiles"] == 14 and summary["failed"] == 1 and summary["tiles_per_s"] > 0
    assert "d.tif" in summary["failures"]["d"]
    assert sorted(p.name for p in out.glob("*.h5")) == ["a.h5", "b.h5", "c.h5", "e.h5"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["encoder"] == ENCODER and saved["batch_size"] == 4

    # the job's features are the library call's, with the job's (seeded) encoder
    cfg = ExtractConfig(job=job, encoder=ENCODER, device="cpu", num_workers=0)
    direct = tmp_path / "direct.h5"
    extract_features(slides / "c.tif", job / "patches" / "c.h5", direct, build_encoder(cfg))
    with h5py.File(out / "c.h5", "r") as f, h5py.File(direct, "r") as g:
        np.testing.assert_allclose(f["features"][()], g["features"][()], atol=1e-5)

    # a re-run skips every finished bag and retries only the failed slide
    stamp = (out / "a.h5").stat().st_mtime_ns
    assert _cli(argv) == 1
    summary = yaml.safe_load(capsys.readouterr().out)
    assert summary["skipped"] == 4 and summary["tiles"] == 0 and summary["failed"] == 1
    assert (out / "a.h5").stat().st_mtime_ns == stamp


def test_config_problems_are_one_line_errors(tmp_path: Path) -> None:
    job = _job(tmp_path / "job", with_bad=False)
    with pytest.raises(ConfigError, match="key 'encoder': required key is missing"):
        _cli(["--job", str(job)])
    with pytest.raises(ConfigError, match=r"^encoder: key 'encoder': unknown encoder 'nope:x'"):
        _cli(["--job", str(job), "--encoder", "nope:x"])
    with pytest.raises(InvalidInputError, match="not a tiling job folder"):
        _cli(["--job", str(job / "patches"), "--encoder", ENCODER])


def test_slides_are_found_from_the_tiling_config(slides: Path, tmp_path: Path) -> None:
    job = _job(tmp_path / "wsi" / "run1" / "0.5mpp_64px", with_bad=False)
    (job / "config.yaml").write_text(yaml.safe_dump({"slides": str(slides)}))
    # --job may name the job folder above its only settings folder
    cfg = ExtractConfig(job=tmp_path / "wsi" / "run1", encoder=ENCODER, device="cpu", num_workers=0)
    summary = run_extract_job(cfg)
    assert summary["ok"] == 3 and summary["tiles"] == 14

    (job / "config.yaml").unlink()
    shutil.rmtree(_out(job))
    summary = run_extract_job(cfg)
    assert summary["failed"] == 3
    assert summary["failures"]["a"].endswith(
        "a.h5: cannot find its slide; pass --slides FOLDER_or_CSV (slides named by stem)"
    )


def test_after_the_tiling_job_with_resized_tiles(tmp_path: Path) -> None:
    # the real pipeline: `wsi tile` at 0.75 um/px on a 0.5 um/px slide reads 96 px, resized to 64
    (tmp_path / "slides").mkdir()
    image = synthetic_tissue_image(768, 768, seed=2)[0]
    slide = write_pyramidal_tiff(tmp_path / "slides" / "x.tif", image, levels=2, tile=128)
    tile_cfg = TileJobConfig(
        slides=tmp_path / "slides", target_mpp=0.75, patch_size=64, out_dir=tmp_path / "job"
    )
    assert run_tile_job(tile_cfg, progress=False)["ok"] == 1
    cfg = ExtractConfig(job=tmp_path / "job", encoder=ENCODER, device="cpu", num_workers=0)
    summary = run_extract_job(cfg)  # the slide is found through the tiling job's config.yaml
    assert summary["ok"] == 1 and summary["tiles"] > 0
    with h5py.File(_out(tmp_path / "job") / "x.h5", "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
        assert f["coords"].attrs["read_size"] == 96 and f["coords"].attrs["patch_size"] == 64
    encoder = build_encoder(cfg)
    with open_slide(slide) as s, torch.inference_mode():
        tiles = [s.read_region_mpp((int(x), int(y)), 0.75, (64, 64)) for x, y in coords]
        expected = encoder(torch.stack([encoder.eval_transform(t) for t in tiles])).numpy()
    np.testing.assert_allclose(feats, expected, atol=1e-5)


@pytest.mark.slow
def test_two_processes_write_the_one_process_features(slides: Path, tmp_path: Path) -> None:
    single = _job(tmp_path / "single", with_bad=False)
    ddp = _job(tmp_path / "ddp", with_bad=False)
    cfg = ExtractConfig(job=single, encoder=ENCODER, slides=slides, device="cpu", num_workers=0)
    assert run_extract_job(cfg)["ok"] == 3

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "medcl", "wsi", "extract", "--job", str(ddp), "--encoder", ENCODER]
    cmd += ["--slides", str(slides), "--device", "cpu", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load(result.stdout)  # printed once, by rank 0
    assert summary["world_size"] == 2 and summary["ok"] == 3 and summary["tiles"] == 14
    assert summary["slides_per_rank"] == [2, 1]  # rank 0: a, c; rank 1: b
    assert _status(_out(ddp) / "status.csv") == {
        "a": ("ok", "5"),
        "b": ("ok", "3"),
        "c": ("ok", "6"),
    }
    for stem in "abc":
        with h5py.File(_out(single) / f"{stem}.h5") as f, h5py.File(_out(ddp) / f"{stem}.h5") as g:
            assert g.attrs["complete"]
            np.testing.assert_array_equal(f["coords"][()], g["coords"][()])
            np.testing.assert_allclose(f["features"][()], g["features"][()], rtol=0, atol=1e-5)


def test_other_weights_size_or_precision_never_reuse_old_features(
    slides: Path, tmp_path: Path
) -> None:
    import json

    from medcl.models.encoders import create_encoder

    job = _job(tmp_path / "job", with_bad=False)
    base = ExtractConfig(job=job, encoder=ENCODER, slides=slides, device="cpu", num_workers=0)
    first = run_extract_job(base)
    assert first["ok"] == 3 and first["skipped"] == 0
    random_dir = Path(first["out_dir"])
    settings = json.loads((random_dir / "settings.json").read_text())
    assert settings["weights_sha256"] is None and settings["seed"] == 0

    torch.manual_seed(7)  # "real" weights: another file, other features
    weights = tmp_path / "w.pt"
    torch.save(create_encoder(ENCODER).backbone.state_dict(), weights)
    real = run_extract_job(base.model_copy(update={"weights": weights}))
    real_dir = Path(real["out_dir"])
    assert real_dir != random_dir and real["skipped"] == 0 and real["tiles"] == 14
    from medcl.engine.checkpoint import file_sha256

    sha = file_sha256(weights)
    assert f"_w{sha[:8]}_" in real_dir.name and "seed" not in real_dir.name
    assert json.loads((real_dir / "settings.json").read_text())["weights_sha256"] == sha
    with h5py.File(random_dir / "a.h5") as f, h5py.File(real_dir / "a.h5") as g:
        assert not np.allclose(f["features"][()], g["features"][()], atol=1e-3)
    assert run_extract_job(base.model_copy(update={"weights": weights}))["skipped"] == 3

    for change in ({"image_size": 32}, {"precision": "bf16"}, {"seed": 1}):
        other = run_extract_job(base.model_copy(update=change))
        assert Path(other["out_dir"]) not in (random_dir, real_dir) and other["skipped"] == 0
    assert len(list(job.glob("features_*"))) == 5


def test_a_folder_with_other_or_unknown_settings_is_refused(slides: Path, tmp_path: Path) -> None:
    import json

    job = _job(tmp_path / "job", with_bad=False)
    cfg = ExtractConfig(job=job, encoder=ENCODER, slides=slides, device="cpu", num_workers=0)
    out = Path(run_extract_job(cfg)["out_dir"])
    stored = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({**stored, "weights_sha256": "ab" * 32}))
    with pytest.raises(InvalidInputError) as err:
        run_extract_job(cfg)
    assert str(err.value).startswith(
        f"{out}: holds outputs made with other settings (weights_sha256: '{'ab' * 32}' "
        "stored, None now)"
    )
    (out / "settings.json").unlink()  # features of an older medcl: how they were made is unknown
    with pytest.raises(InvalidInputError, match=r"holds outputs but no settings\.json"):
        run_extract_job(cfg)


def test_job_feeds_tiles_whole_without_a_centre_crop() -> None:
    """timm's resnet18 eval transform resizes to 256 and crops 224; the job keeps every pixel."""
    encoder = build_encoder(ExtractConfig(job=Path("."), encoder="timm:resnet18"))
    assert encoder.spec.size == (224, 224) and encoder.spec.crop_pct == 1.0
    tile = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = encoder.eval_transform(tile)
    mean = torch.tensor(encoder.spec.mean).view(3, 1, 1)
    std = torch.tensor(encoder.spec.std).view(3, 1, 1)
    expected = (torch.from_numpy(tile).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)  # the tile itself, border included
    resized = build_encoder(
        ExtractConfig(job=Path("."), encoder="timm:resnet18", image_size=96)
    ).spec
    assert resized.size == (96, 96) and resized.crop_pct == 1.0
