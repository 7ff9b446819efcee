"""Synthetic DICOM files for tests and demos (written with pydicom, no real patient data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_dicom_slice(path: Path, series_uid: str, index: int, pixels: np.ndarray) -> Path:
    """Write one minimal CT slice of a series.

    The slice sits at LPS origin ``(10, 20, 2 * index)`` mm, rows 0.7 mm apart, columns 0.5 mm,
    stored as int16 with rescale intercept -1024.

    Args:
        path: file to write.
        series_uid: the SeriesInstanceUID shared by the slices of one series.
        index: slice number (0-based; InstanceNumber is ``index + 1``).
        pixels: ``(rows, columns)`` stored values.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series_uid, "CT", index + 1
    ds.ImagePositionPatient = [10.0, 20.0, 2.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.5], 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_synthetic_volumes(
    folder: Path,
    depths: tuple[int, ...] = (12, 16, 20),
    *,
    size: int = 64,
    num_classes: int = 2,
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    seed: int = 0,
) -> list[tuple[Path, Path]]:
    """Write CT-like volumes ``v{i}.nii.gz`` with label maps ``v{i}_seg.nii.gz``.

    Each volume holds random spheres (MONAI's ``create_test_image_3d``) with labels
    ``1..num_classes``; intensities are scaled to a HU-like range [-500, 500].

    Returns:
        ``(image, label)`` paths in the order of ``depths``.
    """
    import nibabel as nib
    from monai.data import create_test_image_3d

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    out = []
    for i, depth in enumerate(depths):
        img, seg = create_test_image_3d(
            size,
            size,
            depth,
            num_objs=6,
            rad_max=max(3, min(size, depth) // 3),
            rad_min=2,
            num_seg_classes=num_classes,
            noise_max=0.1,
            random_state=np.random.RandomState(seed + i),
        )
        image, label = folder / f"v{i}.nii.gz", folder / f"v{i}_seg.nii.gz"
        nib.save(nib.Nifti1Image((img * 1000 - 500).astype(np.int16), affine), image)
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), label)
        out.append((image, label))
    return out
