"""Finding (image, label) pairs in BIDS, MSD and flat folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcl.errors import InvalidInputError
from medcl.io.datasets.volume_folders import VolumeItem, detect_layout, find_volume_pairs


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_bids_pairs_with_sessions_and_label_suffix(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz",
        "derivatives/labels/sub-01/anat/sub-01_T1w_seg-manual.nii.gz",
        "derivatives/labels/sub-01/anat/sub-01_T2w_lesion-manual.nii.gz",
        "derivatives/labels/sub-02/ses-a/anat/sub-02_ses-a_T1w_seg-manual.nii.gz",
    )
    assert detect_layout(tmp_path) == "bids"
    labels = tmp_path / "derivatives/labels"
    assert find_volume_pairs(tmp_path) == [
        VolumeItem(
            tmp_path / "sub-01/anat/sub-01_T1w.nii.gz",
            labels / "sub-01/anat/sub-01_T1w_seg-manual.nii.gz",
            "sub-01",
            "T1w",
        ),
        VolumeItem(tmp_path / "sub-01/anat/sub-01_T2w.nii.gz", None, "sub-01", "T2w"),
        VolumeItem(
            tmp_path / "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz",
            labels / "sub-02/ses-a/anat/sub-02_ses-a_T1w_seg-manual.nii.gz",
            "sub-02",
            "T1w",
        ),
    ]
    lesions = find_volume_pairs(tmp_path, label_suffix="lesion-manual")
    assert [item.label.name if item.label else None for item in lesions] == [
        None,
        "sub-01_T2w_lesion-manual.nii.gz",
        None,
    ]


def test_msd_pairs_with_dataset_json_and_nnunet_channel_names(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "imagesTr/spleen_2.nii.gz",
        "imagesTr/._spleen_2.nii.gz",  # macOS resource fork shipped in MSD archives
        "imagesTr/spleen_3_0000.nii.gz",
        "imagesTr/spleen_4.nii.gz",
        "labelsTr/spleen_2.nii.gz",
        "labelsTr/spleen_3.nii.gz",
    )
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    items = find_volume_pairs(tmp_path)
    assert [(i.image.name, i.label.name if i.label else None, i.subject) for i in items] == [
        ("spleen_2.nii.gz", "spleen_2.nii.gz", "spleen_2"),
        ("spleen_3_0000.nii.gz", "spleen_3.nii.gz", "spleen_3"),
        ("spleen_4.nii.gz", None, "spleen_4"),
    ]
    assert {i.modality for i in items} == {"CT"}
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"dataset\.json: not valid JSON"):
        find_volume_pairs(tmp_path)


def test_flat_pairs_nrrd_and_nifti(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "brain1_image.nrrd",
        "brain1_label.nrrd",
        "case7.nii.gz",
        "case7_seg.nii.gz",
        "phantom.nrrd",
        "phantom-label.nrrd",
        "lonely.nii",
        "notes.txt",
    )
    assert detect_layout(tmp_path) == "flat"
    pairs = {
        i.subject: (i.image.name, i.label.name if i.label else None)
        for i in find_volume_pairs(tmp_path)
    }
    assert pairs == {
        "brain1": ("brain1_image.nrrd", "brain1_label.nrrd"),
        "case7": ("case7.nii.gz", "case7_seg.nii.gz"),
        "phantom": ("phantom.nrrd", "phantom-label.nrrd"),
        "lonely": ("lonely.nii", None),
    }


def test_missing_or_empty_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"nowhere: dataset folder not found"):
        find_volume_pairs(tmp_path / "nowhere")
    _touch(tmp_path, "readme.txt")
    with pytest.raises(InvalidInputError, match=r"no NIfTI or NRRD images found in flat layout"):
        find_volume_pairs(tmp_path)
    with pytest.raises(InvalidInputError, match=r"MSD layout expects an imagesTr/ folder"):
        find_volume_pairs(tmp_path, layout="msd")


@pytest.mark.realdata
def test_real_ivadomed_bids_folders(data_root: Path) -> None:
    root = data_root / "volumes" / "ivadomed"
    items = find_volume_pairs(root)
    assert [(i.modality, i.label is not None) for i in items] == [
        ("T1w", True),
        ("T2star", True),
        ("T2w", True),
    ]
    assert all(i.subject == "sub-unf01" for i in items)
    assert (
        items[2].label == root / "derivatives/labels/sub-unf01/anat/sub-unf01_T2w_seg-manual.nii.gz"
    )
    (spleen,) = find_volume_pairs(root / "ct_scan")
    assert spleen.subject == "sub-spleen2" and spleen.modality == "ct"
    assert spleen.label is not None and spleen.label.name == "sub-spleen2_ct_seg-manual.nii.gz"


@pytest.mark.realdata
def test_real_pyradiomics_flat_folder(data_root: Path) -> None:
    items = find_volume_pairs(data_root / "volumes" / "pyradiomics")
    assert {i.subject: i.label.name if i.label else None for i in items} == {
        "brain1": "brain1_label.nrrd",
        "brain2": "brain2_label.nrrd",
        "breast1": "breast1_label.nrrd",
        "prostate_phantom_subvolume": "prostate_phantom_subvolume-label.nrrd",
    }
