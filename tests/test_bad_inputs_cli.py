"""Every bad input of the foundation issue, through the command line users run.

Each must give exit code 2, one line on stderr starting ``medcl: error:``, naming the file and the
problem, no traceback; and a good input inspected afterwards in the same process still works.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from medcl.cli import main
from medcl.testing.lying_headers import write_lying_nifti, write_lying_tiff
from medcl.testing.volumes import write_dicom_slice


def _nifti(path: Path, shape: tuple[int, ...] = (8, 8, 4)) -> Path:
    nib.save(
        nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), np.eye(4)), path
    )
    return path


def truncated_nifti(tmp: Path) -> tuple[list[str], str, str]:
    good = _nifti(tmp / "good.nii.gz")
    data = good.read_bytes()
    bad = tmp / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    assert gzip.decompress(data)  # the original is fine
    return [str(bad)], "truncated.nii.gz", "truncated"


def zero_byte(tmp: Path) -> tuple[list[str], str, str]:
    bad = tmp / "empty.nii.gz"
    bad.write_bytes(b"")
    return [str(bad)], "empty.nii.gz", "empty"


def text_named_svs(tmp: Path) -> tuple[list[str], str, str]:
    bad = tmp / "notes.svs"
    bad.write_text("patient list, not a slide\n")
    return [str(bad)], "notes.svs", "not a readable slide"


def mixed_dicom_series(tmp: Path) -> tuple[list[str], str, str]:
    folder = tmp / "dicom"
    folder.mkdir()
    a, b = generate_uid(), generate_uid()
    for k in range(2):
        write_dicom_slice(folder / f"a{k}.dcm", a, k, np.zeros((4, 4)))
        write_dicom_slice(folder / f"b{k}.dcm", b, k, np.ones((4, 4)))
    return [str(folder)], "dicom", "holds 2 DICOM series"


def label_of_other_shape(tmp: Path) -> tuple[list[str], str, str]:
    image = _nifti(tmp / "ct.nii.gz", (8, 8, 4))
    label = _nifti(tmp / "seg.nii.gz", (8, 6, 4))
    return [str(image), "--label", str(label)], "seg.nii.gz", "shape"


def manifest_missing_file(tmp: Path) -> tuple[list[str], str, str]:
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "ok.png")
    manifest = tmp / "manifest.csv"
    manifest.write_text("path,label,domain,group\nok.png,a,h1,p1\nmissing.png,b,h1,p2\n")
    return [str(manifest)], "missing.png", "not found"


def image_not_an_image(tmp: Path) -> tuple[list[str], str, str]:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp / "set" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp / "set" / cls / "ok.png")
    (tmp / "set" / "b" / "fake.jpg").write_text("this is text")
    return [str(tmp / "set"), "--kind", "images"], "fake.jpg", "cannot identify image file"


def nifti_claiming_30000_cubed(tmp: Path) -> tuple[list[str], str, str]:
    bad = write_lying_nifti(tmp / "huge.nii.gz", (30000, 30000, 30000))
    return [str(bad)], "huge.nii.gz", "27,000,000,000,000 voxels"


def nifti_negative_dimension(tmp: Path) -> tuple[list[str], str, str]:
    bad = write_lying_nifti(tmp / "negative.nii", (4, -5, 4))
    return [str(bad)], "negative.nii", "dimension 1 is -5"


def tiff_declaring_100000_squared(tmp: Path) -> tuple[list[str], str, str]:
    bad = write_lying_tiff(tmp / "lie.tif", 100_000, 100_000)
    return [str(bad)], "lie.tif", "100000 x 100000 px"


CASES: dict[str, Callable[[Path], tuple[list[str], str, str]]] = {
    "truncated_nifti": truncated_nifti,
    "zero_byte": zero_byte,
    "text_named_svs": text_named_svs,
    "mixed_dicom_series": mixed_dicom_series,
    "label_of_other_shape": label_of_other_shape,
    "manifest_missing_file": manifest_missing_file,
    "image_not_an_image": image_not_an_image,
    "nifti_claiming_30000_cubed": nifti_claiming_30000_cubed,
    "nifti_negative_dimension": nifti_negative_dimension,
    "tiff_declaring_100000_squared": tiff_declaring_100000_squared,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, name, problem = CASES[case](tmp_path)
    code = main(["data", "inspect", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("medcl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert name in err, err
    assert problem.lower() in err.lower(), err
    # nothing else breaks: a good volume inspected right after still works
    good = _nifti(tmp_path / "fine.nii.gz")
    assert main(["data", "inspect", str(good), "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "preview.png").is_file()
