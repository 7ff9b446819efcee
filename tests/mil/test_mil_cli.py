"""`medcl mil train` end to end on a tiny manifest of h5 bags."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medcl.cli.mil import add_parser
from medcl.errors import InvalidInputError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcl")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def _write_bags(root: Path, n: int = 8) -> Path:
    g = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "tumour" if i % 2 else "benign"
        x = g.normal(size=(6, 4)).astype(np.float32)
        if label == "tumour":
            x[:2] += 3.0
        path = root / "bags" / f"slide{i}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("coords", data=np.arange(12, dtype=np.int64).reshape(6, 2) * 256)
        rows.append({"bag": f"bags/slide{i}.h5", "label": label, "patient": f"P{i // 2}"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["bag", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_mil_train_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medcl.mil.train import load_mil_model

    manifest = _write_bags(tmp_path)
    config = Path(__file__).resolve().parents[2] / "configs" / "mil" / "train.yaml"
    args = _parser().parse_args(
        [
            "mil", "train", "--bags", str(manifest), "--config", str(config),
            "--workspace", str(tmp_path / "ws"), "--folds", "2", "--aggregator", "ins",
            "--epochs", "2", "--device", "cpu",
            "--set", "aggregator_kwargs.hidden_dim=8", "--set", "progress=false",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ins on 2 classes ['benign', 'tumour']" in out and "mean" in out
    runs = list((tmp_path / "ws" / "mil").iterdir())
    assert [r.name for r in runs] == ["manifest_aggins_folds2_seed0"]
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    tested: list[str] = []
    for k in (0, 1):
        fold = run / f"fold_{k}"
        for name in ("model.pt", "metrics.json", "predictions.csv", "config.yaml"):
            assert (fold / name).is_file(), name
        with (fold / "predictions.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["bag_id", "label", "score", "prob_benign", "prob_tumour"]
        for row in rows:
            assert float(row["score"]) == pytest.approx(float(row["prob_tumour"]), abs=1e-5)
            assert row["label"] == ("tumour" if int(row["bag_id"][5:]) % 2 else "benign")
        tested += [r["bag_id"] for r in rows]
        report = json.loads((fold / "metrics.json").read_text())
        assert set(report["test_bags"]) == {r["bag_id"] for r in rows}
        patients = {int(b[5:]) // 2 for b in report["test_bags"]}
        train_patients = {int(b[5:]) // 2 for b in report["train_bags"] + report["val_bags"]}
        assert not patients & train_patients
        model, meta = load_mil_model(fold / "model.pt")
        assert meta["class_names"] == ["benign", "tumour"] and meta["aggregator"] == "ins"
        assert model.in_dim == 4
    assert sorted(tested) == sorted(f"slide{i}" for i in range(8))
    # a re-run with the same settings reuses the finished folds
    stamps = {k: (run / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in (0, 1)}
    summary = json.loads((run / "summary.json").read_text())
    assert args.func(args) == 0
    assert {k: (run / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in (0, 1)} == stamps
    assert json.loads((run / "summary.json").read_text()) == summary


def test_mil_train_single_split_and_bad_manifest(tmp_path: Path) -> None:
    manifest = _write_bags(tmp_path)
    args = _parser().parse_args(
        [
            "mil", "train", "--bags", str(manifest), "--out", str(tmp_path / "one"),
            "--folds", "1", "--epochs", "1", "--device", "cpu", "--aggregator", "mean",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    assert (tmp_path / "one" / "fold_0" / "model.pt").is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.h5,a\n")
    args = _parser().parse_args(["mil", "train", "--bags", str(bad), "--out", str(tmp_path)])
    with pytest.raises(InvalidInputError, match="manifest needs columns bag,label; missing bag"):
        args.func(args)
    args = _parser().parse_args(
        ["mil", "train", "--bags", str(manifest), "--folds", "9", "--out", str(tmp_path / "x")]
    )
    with pytest.raises(InvalidInputError, match="9 folds need at least 9 patients, found 4"):
        args.func(args)


def test_manifest_errors_and_bag_id_column(tmp_path: Path) -> None:
    from medcl.mil.data import bags_from_manifest

    manifest = _write_bags(tmp_path, n=2)
    dup = tmp_path / "dup.csv"
    dup.write_text("bag,label\nbags/slide0.h5,a\nbags/slide0.h5,b\n")
    with pytest.raises(InvalidInputError, match="bag id 'slide0' appears twice"):
        bags_from_manifest(dup)
    named = tmp_path / "named.csv"
    named.write_text("bag,label,bag_id\nbags/slide0.h5,a,one\nbags/slide0.h5,b,two\n")
    bags, names = bags_from_manifest(named, class_names=["b", "a"])
    assert [b.bag_id for b in bags] == ["one", "two"] and names == ["b", "a"]
    assert [b.label for b in bags] == [1, 0]  # the given class order, not sorted
    assert bags[0].coords is not None and bags[0].coords.shape == (6, 2)
    with pytest.raises(InvalidInputError, match=r"labels \['tumour'\] are not in class_names"):
        bags_from_manifest(manifest, class_names=["benign", "other"])
    missing = tmp_path / "missing.csv"
    missing.write_text("bag,label\nbags/nothing.h5,a\n")
    with pytest.raises(InvalidInputError, match="bag file not found"):
        bags_from_manifest(missing)


@pytest.mark.realdata
def test_mopadi_bags_load_and_score(data_root: Path, tmp_path: Path) -> None:
    from medcl.mil.aggregators import create_aggregator
    from medcl.mil.data import bags_from_manifest
    from medcl.mil.predict import predict_bags

    files = sorted((data_root / "slides" / "mopadi").glob("*/features.h5"))
    if not files:
        pytest.skip("no mopadi features.h5 under slides/mopadi")
    manifest = tmp_path / "m.csv"
    lines = [f"{f},{'a' if i % 2 else 'b'},{f.parent.name}" for i, f in enumerate(files)]
    manifest.write_text("bag,label,bag_id\n" + "\n".join(lines) + "\n")
    bags, _ = bags_from_manifest(manifest)
    assert all(b.features.shape[1] == 512 and len(b) > 0 for b in bags)
    for name in ("abmil", "ins"):
        preds = predict_bags(create_aggregator(name, 512).eval(), bags)
        assert np.isfinite(preds.bag_probs).all()
        assert [len(s) for s in preds.instance_scores] == [len(b) for b in bags]
