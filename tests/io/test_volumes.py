"""Reading volumes and labels: synthetic bad inputs, DICOM discovery, and the real sample data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from medcl.errors import AlignmentError, InvalidInputError
from medcl.io.dicom import find_series
from medcl.io.volumes import (
    Volume,
    bids_modality,
    read_image_and_label,
    read_label,
    read_volume,
    save_volume,
)
from medcl.testing.volumes import write_dicom_slice


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


# ---------------------------------------------------------------- synthetic inputs


def test_nifti_roundtrip_keeps_array_affine_and_metadata(tmp_path: Path) -> None:
    affine = np.diag([-2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [5.0, -7.0, 11.0]
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    vol = Volume(array, affine, tmp_path / "x")
    out = save_volume(vol, tmp_path / "sub" / "sub-01_T1w.nii.gz")
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine)
    assert back.spacing == (2.0, 1.5, 3.0)
    assert back.orientation == "LAS"
    assert back.modality == "T1w"
    assert back.meta["format"] == "nifti" and back.meta["dtype"] == "int16"


def test_missing_zero_byte_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"nothere\.nii\.gz: file not found"):
        read_volume(tmp_path / "nothere.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(InvalidInputError, match=r"empty\.nii\.gz: file is empty \(0 bytes\)"):
        read_volume(empty)
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG not really")
    with pytest.raises(
        InvalidInputError, match=r"photo\.png: unsupported file type '\.png'.*\.nrrd"
    ):
        read_volume(png)
    with pytest.raises(InvalidInputError, match=r"out\.png: .*must end in \.nii or \.nii\.gz"):
        save_volume(Volume(np.zeros((2, 2, 2)), np.eye(4), png), tmp_path / "out.png")


def test_truncated_and_fake_nifti_are_refused(tmp_path: Path) -> None:
    good = _nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        InvalidInputError,
        match=r"cut\.nii\.gz: file is truncated or not a valid "
        r"gzip-compressed NIfTI \(EOFError",
    ):
        read_volume(cut)
    fake = tmp_path / "fake.nii"
    fake.write_text("this is not an image\n" * 30)
    with pytest.raises(
        InvalidInputError, match=r"fake\.nii: file is truncated or not a valid NIfTI"
    ):
        read_volume(fake)


def test_nrrd_lps_space_becomes_ras_affine(tmp_path: Path) -> None:
    import nrrd

    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 0.5, 3.0]),
        "space origin": np.array([-10.0, 20.0, 5.0]),
    }
    data = np.zeros((4, 5, 6), dtype=np.int16)
    data[1, 2, 3] = 9
    nrrd.write(str(tmp_path / "a.nrrd"), data, header)
    vol = read_volume(tmp_path / "a.nrrd")
    assert vol.orientation == "LPS" and vol.spacing == (0.5, 0.5, 3.0)
    # voxel (1, 2, 3) is at LPS (-10 + 0.5, 20 + 1, 5 + 9) = RAS (9.5, -21, 14)
    np.testing.assert_allclose(vol.affine @ [1, 2, 3, 1], [9.5, -21.0, 14.0, 1.0])
    assert vol.array[1, 2, 3] == 9 and vol.meta["format"] == "nrrd"


def test_4d_needs_a_frame_in_range(tmp_path: Path) -> None:
    array = np.stack([np.full((3, 3, 2), t, np.float32) for t in range(5)], axis=-1)
    path = _nifti(tmp_path / "bold.nii.gz", array)
    with pytest.raises(
        InvalidInputError, match=r"bold\.nii\.gz: 4D volume with 5 frames: pass frame="
    ):
        read_volume(path)
    with pytest.raises(
        InvalidInputError, match=r"bold\.nii\.gz: frame=5 is out of range: .* 5 frames"
    ):
        read_volume(path, frame=5)
    vol = read_volume(path, frame=3)
    assert vol.shape == (3, 3, 2) and np.all(vol.array == 3)
    assert vol.meta["frame"] == 3 and vol.meta["n_frames"] == 5


def test_label_of_another_shape_is_an_alignment_error(tmp_path: Path) -> None:
    image = _nifti(tmp_path / "img.nii.gz", np.zeros((12, 12, 5), np.float32))
    label = _nifti(tmp_path / "lab.nii.gz", np.zeros((10, 10, 5), np.uint8))
    expected = r"lab\.nii\.gz: label shape \(10, 10, 5\) differs from image shape \(12, 12, 5\) of "
    with pytest.raises(AlignmentError, match=expected + r".*img\.nii\.gz"):
        read_image_and_label(image, label)


def test_label_shifted_grid_is_an_alignment_error(tmp_path: Path) -> None:
    image = _nifti(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.float32))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    label = _nifti(tmp_path / "lab.nii.gz", np.zeros((4, 4, 4), np.uint8), shifted)
    expected = (
        r"lab\.nii\.gz: label grid .* differs from the grid of .*img\.nii\.gz .* by up to 0\.5 mm"
    )
    with pytest.raises(AlignmentError, match=expected):
        read_image_and_label(image, label)


def test_flipped_label_is_reoriented_onto_the_image_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image_array = rng.random((5, 6, 4)).astype(np.float32)
    image = _nifti(tmp_path / "img.nii.gz", image_array)  # identity affine: RAS
    label_array = (image_array > 0.5).astype(np.uint8)
    # the same grid stored with axes 1 and 2 reversed (R, P, I): index j -> 5 - j, k -> 3 - k
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, 5], [0, 0, -1, 3], [0, 0, 0, 1]], dtype=float)
    label = _nifti(tmp_path / "lab.nii.gz", label_array[:, ::-1, ::-1], flip)
    img, lab = read_image_and_label(image, label)
    np.testing.assert_array_equal(lab.array, label_array)
    np.testing.assert_array_equal(lab.affine, img.affine)
    assert lab.meta["reoriented"] is True


def test_label_values_must_be_integral(tmp_path: Path) -> None:
    ref = read_volume(_nifti(tmp_path / "img.nii.gz", np.zeros((3, 3, 3), np.float32)))
    whole = _nifti(tmp_path / "whole.nii.gz", np.full((3, 3, 3), 2.0, np.float32))
    assert read_label(whole, ref).array.dtype == np.uint8
    frac = np.zeros((3, 3, 3), np.float32)
    frac[1, 1, 1] = 0.5
    path = _nifti(tmp_path / "soft.nii.gz", frac)
    with pytest.raises(
        InvalidInputError,
        match=r"soft\.nii\.gz: label map has non-integral values "
        r"\(e\.g\. 0\.5\)",
    ):
        read_label(path, ref)


def test_dicom_series_is_read_with_ras_affine_and_notes_ignored(tmp_path: Path) -> None:
    uid = generate_uid()
    slices = [np.arange(12, dtype=np.int16).reshape(3, 4) + 100 * k for k in range(3)]
    for k, pixels in enumerate(slices):
        write_dicom_slice(tmp_path / f"slice{k}.dcm", uid, k, pixels)
    (tmp_path / "notes.txt").write_text("not DICOM")
    vol = read_volume(tmp_path)
    assert vol.shape == (4, 3, 3)  # (columns, rows, slices)
    assert vol.modality == "CT" and vol.meta["series_uid"] == uid
    # voxel (column i, row j, slice k) holds pixel [j, i] of slice k, rescaled by -1024
    assert vol.array[2, 1, 2] == slices[2][1, 2] - 1024
    # LPS position (10 + 0.5 i, 20 + 0.7 j, 2 k) -> RAS (-10 - 0.5 i, -20 - 0.7 j, 2 k)
    np.testing.assert_allclose(vol.affine @ [2, 1, 2, 1], [-11.0, -20.7, 4.0, 1.0])
    np.testing.assert_allclose(vol.spacing, (0.5, 0.7, 2.0))


def test_dicom_folder_with_two_series_asks_for_series_uid(tmp_path: Path) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    for k in range(3):
        write_dicom_slice(tmp_path / f"a{k}.dcm", uid_a, k, np.zeros((2, 2)))
    for k in range(2):
        write_dicom_slice(tmp_path / f"b{k}.dcm", uid_b, k, np.ones((2, 2)))
    assert {u: len(s.files) for u, s in find_series(tmp_path).items()} == {uid_a: 3, uid_b: 2}
    with pytest.raises(
        InvalidInputError,
        match=rf"holds 2 DICOM series: {uid_a} \(3 files\), "
        rf"{uid_b} \(2 files\); pass series_uid=",
    ):
        read_volume(tmp_path)
    vol = read_volume(tmp_path, series_uid=uid_b)
    assert vol.shape == (2, 2, 2) and np.all(vol.array == 1 - 1024)
    with pytest.raises(InvalidInputError, match=r"no series with SeriesInstanceUID 1\.2\.3"):
        read_volume(tmp_path, series_uid="1.2.3")


def test_folder_without_dicom_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"folder holds no DICOM image files"):
        read_volume(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match=rf"{tmp_path.name}: folder holds no DICOM image"):
        read_volume(tmp_path)


def test_bids_modality_from_file_names() -> None:
    assert bids_modality("sub-01_ses-2_T2star.nii.gz") == "T2star"
    assert bids_modality("sub-spleen2_ct.nii.gz") == "ct"
    assert bids_modality("brain1_image.nrrd") is None
    assert bids_modality("T1w.nii") is None


# ---------------------------------------------------------------- real sample data


@pytest.mark.realdata
def test_real_totalsegmentator_ct_with_labels(data_root: Path) -> None:
    base = data_root / "volumes" / "totalsegmentator"
    image, label = read_image_and_label(base / "example_ct_sm.nii.gz", base / "example_seg.nii.gz")
    assert image.shape == label.shape == (122, 101, 30)
    assert image.spacing == (3.0, 3.0, 3.0) and image.orientation == "RAS"
    classes = np.unique(label.array)
    assert 38 <= classes.size - 1 <= 45  # "41 labels"
    inside = image.array[label.array > 0]
    assert inside.mean() > -300 and image.array.mean() < -300  # organs are tissue, not air


@pytest.mark.realdata
def test_real_totalsegmentator_mr_with_labels(data_root: Path) -> None:
    base = data_root / "volumes" / "totalsegmentator"
    image, label = read_image_and_label(
        base / "example_mr_sm.nii.gz", base / "example_seg_mr.nii.gz"
    )
    assert image.shape == label.shape == (117, 91, 20) and image.orientation == "LPS"
    assert np.unique(label.array).size == 24  # background and 23 organs
    assert (image.array[label.array > 0] > 10).mean() > 0.85  # organs lie in the body, not air
    np.testing.assert_array_equal(label.affine, image.affine)


@pytest.mark.realdata
def test_real_dicom_series_and_flipped_nifti_label_agree(data_root: Path) -> None:
    base = data_root / "volumes" / "totalsegmentator"
    image = read_volume(base / "example_ct_dicom")
    assert image.shape == (512, 512, 20) and image.modality == "CT"
    np.testing.assert_allclose(image.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-4)
    raw = read_volume(base / "example_seg_dicom.nii.gz")
    assert image.orientation == "LPI" and raw.orientation == "LAS"  # same grid, y and z flipped
    label = read_label(base / "example_seg_dicom.nii.gz", image)
    assert label.meta["reoriented"] is True
    np.testing.assert_array_equal(label.affine, image.affine)
    aligned_hu = image.array[label.array > 0].mean()
    unflipped_hu = image.array[raw.array > 0].mean()
    assert aligned_hu > -300 and aligned_hu > unflipped_hu + 200, (aligned_hu, unflipped_hu)


@pytest.mark.realdata
def test_real_pyradiomics_nrrd_brain_with_label(data_root: Path) -> None:
    base = data_root / "volumes" / "pyradiomics"
    image, label = read_image_and_label(base / "brain1_image.nrrd", base / "brain1_label.nrrd")
    assert image.shape == (256, 256, 25) and image.meta["format"] == "nrrd"
    np.testing.assert_allclose(image.spacing, (0.78125, 0.78125, 6.5))
    assert image.orientation == "LAS"  # LPS file space with a -y step: stored radiologically
    assert label.array.sum() > 1000 and set(np.unique(label.array)) == {0, 1}
    assert image.array[label.array > 0].mean() > 1.5 * image.array.mean()  # tumour is bright


@pytest.mark.realdata
def test_real_ivadomed_bids_t2w_and_spleen_ct(data_root: Path) -> None:
    bids = data_root / "volumes" / "ivadomed"
    t2w, cord = read_image_and_label(
        bids / "sub-unf01/anat/sub-unf01_T2w.nii.gz",
        bids / "derivatives/labels/sub-unf01/anat/sub-unf01_T2w_seg-manual.nii.gz",
    )
    assert t2w.modality == "T2w" and t2w.shape == (131, 141, 16)
    assert cord.array.dtype == np.uint8 and 0 < cord.array.sum() < cord.array.size // 100
    ct = bids / "ct_scan"
    spleen_ct, spleen = read_image_and_label(
        ct / "sub-spleen2/ct/sub-spleen2_ct.nii.gz",
        ct / "derivatives/labels/sub-spleen2/ct/sub-spleen2_ct_seg-manual.nii.gz",
    )
    assert spleen_ct.modality == "ct" and spleen_ct.shape == (164, 166, 26)
    assert 0 < spleen_ct.array[spleen.array > 0].mean() < 200  # soft tissue HU


@pytest.mark.realdata
def test_real_4d_nifti_needs_a_frame(data_root: Path) -> None:
    path = data_root / "packages" / "nibabel-5.4.2" / "example4d.nii.gz"
    with pytest.raises(InvalidInputError, match=r"example4d\.nii\.gz: 4D volume with 2 frames"):
        read_volume(path)
    vol = read_volume(path, frame=0)
    assert vol.shape == (128, 96, 24) and vol.meta["n_frames"] == 2
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.2), atol=1e-5)


@pytest.mark.realdata
def test_real_single_dicom_file(data_root: Path) -> None:
    vol = read_volume(data_root / "packages" / "pydicom-3.0.2" / "CT_small.dcm")
    assert vol.shape == (128, 128, 1) and vol.modality == "CT" and vol.meta["format"] == "dicom"
    np.testing.assert_allclose(vol.spacing[:2], (0.661468, 0.661468))
    # ImagePositionPatient (-158.14, -179.04, -75.70) LPS is voxel (0, 0, 0) in RAS
    np.testing.assert_allclose(vol.affine[:3, 3], [158.135803, 179.035797, -75.699997], atol=1e-4)
    assert vol.array.min() == -896.0 and vol.array.max() == 1167.0
