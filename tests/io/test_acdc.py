"""The ACDC adapter: public file naming, frames without labels, and patient split files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import InvalidInputError
from medcl.io.datasets.acdc import (
    ACDC_CLASSES,
    acdc_group,
    find_acdc,
    is_acdc_folder,
    load_patient_split,
    make_patient_split,
    patients,
    write_patient_split,
)
from medcl.io.datasets.volume_folders import detect_layout, find_volume_pairs
from medcl.testing.acdc import write_synthetic_acdc

SPLIT = Path(__file__).resolve().parents[2] / "configs" / "splits" / "acdc.yaml"


def test_frames_are_found_with_their_labels(tmp_path: Path) -> None:
    write_synthetic_acdc(tmp_path, [1, 22], size=16, depth=2)
    (tmp_path / "patient001" / "Info.cfg").write_text("ED: 1\n")
    (tmp_path / "patient001" / "patient001_4d.nii.gz").write_bytes(b"")  # ignored
    frames = find_acdc(tmp_path)
    assert [f.id for f in frames] == [
        "patient001_frame01",
        "patient001_frame02",
        "patient022_frame01",
        "patient022_frame02",
    ]
    assert all(f.label is not None and f.label.name.endswith("_gt.nii.gz") for f in frames)
    assert patients(frames) == ["patient001", "patient022"]
    assert is_acdc_folder(tmp_path) and detect_layout(tmp_path) == "acdc"
    items = find_volume_pairs(tmp_path)
    assert len(items) == 4 and {i.subject for i in items} == {"patient001", "patient022"}
    assert ACDC_CLASSES == {"rv": 1, "myocardium": 2, "lv": 3}


def test_frame_without_gt_is_kept_unlabelled_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_synthetic_acdc(tmp_path, [3], size=16, depth=2)
    (tmp_path / "patient003" / "patient003_frame02_gt.nii.gz").unlink()
    with caplog.at_level("INFO"):
        frames = find_acdc(tmp_path)
    assert [(f.frame, f.label is None) for f in frames] == [(1, False), (2, True)]
    assert "patient003_frame02.nii.gz: no _gt label; usable for pretraining only" in caplog.text


def test_folder_without_frames_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "patient001").mkdir()
    with pytest.raises(InvalidInputError, match="no ACDC frames found"):
        find_acdc(tmp_path)


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    ids = [f"patient{i:03d}" for i in range(1, 101)]
    split = make_patient_split(ids, test_per_group=4, val_per_group=1, seed=0)
    assert split == make_patient_split(ids, test_per_group=4, val_per_group=1, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [75, 5, 20]
    assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert sorted(acdc_group(p) for p in split["test"]) == sorted(
        ["DCM", "HCM", "MINF", "NOR", "RV"] * 4
    )


def test_split_file_errors_name_the_file_and_the_patients(tmp_path: Path) -> None:
    path = tmp_path / "split.yaml"
    write_patient_split({"train": ["patient001"], "val": [], "test": ["patient007"]}, path)
    assert load_patient_split(path, ["patient001", "patient007"])["test"] == ["patient007"]
    with pytest.raises(
        InvalidInputError,
        match=r"split.yaml: 1 patient\(s\) named in the split "
        r"are not in the data: patient007",
    ):
        load_patient_split(path, ["patient001"])
    path.write_text("train: [patient001]\nval: []\ntest: [patient001]\n")
    with pytest.raises(InvalidInputError, match="patient001 is in both 'train' and 'test'"):
        load_patient_split(path)
    path.write_text("train: [patient001]\n")
    with pytest.raises(InvalidInputError, match="split file has no val, test list"):
        load_patient_split(path)


def test_committed_split_holds_every_shared_patient_once(data_root: Path) -> None:
    frames = find_acdc(data_root / "volumes" / "acdc")
    split = load_patient_split(SPLIT, patients(frames))
    assert sorted(split["train"] + split["val"] + split["test"]) == patients(frames)
    assert len(split["test"]) == 20 and len(split["val"]) == 5
    assert len(frames) == 160 and all(f.label is not None for f in frames)


test_committed_split_holds_every_shared_patient_once = pytest.mark.realdata(
    test_committed_split_holds_every_shared_patient_once
)
