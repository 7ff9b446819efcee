"""Tiny files whose headers declare far more data than they hold (tests of the size limits).

Each writer makes a file of a few hundred bytes that a careless reader would answer with a
multi-gigabyte allocation, a ``MemoryError`` or an ``OverflowError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

SHORT, LONG = 3, 4  # TIFF field types


def write_lying_nifti(path: Path, dims: Sequence[int], dtype: str = "int16") -> Path:
    """A ``.nii`` (or ``.nii.gz``) whose header says ``dims`` (any ints, negative included)
    followed by only 16 bytes of voxel data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_shape((2, 2, 2))
    raw = bytearray(header.binaryblock)
    padded = [len(dims), *dims, *([1] * (7 - len(dims)))]
    struct.pack_into("<8h", raw, 40, *padded)  # dim[0..7] at byte 40 of the NIfTI-1 header
    data = bytes(raw) + b"\0" * 4 + b"\0" * 16  # 4-byte extension flag, then the "voxels"
    if path.name.endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_lying_nrrd(path: Path, sizes: Sequence[int]) -> Path:
    """A raw NRRD whose header declares ``sizes`` (any ints) over 8 bytes of data."""
    header = (
        "NRRD0004\n"
        "type: uint8\n"
        f"dimension: {len(sizes)}\n"
        f"sizes: {' '.join(str(s) for s in sizes)}\n"
        "encoding: raw\n\n"
    )
    path.write_bytes(header.encode("ascii") + b"\0" * 8)
    return path


def write_lying_tiff(path: Path, width: int, height: int, *, tiled: bool = False) -> Path:
    """A little-endian baseline RGB TIFF declaring ``width`` x ``height`` px, uncompressed, in
    one strip (or one 256 px tile with ``tiled``), with 8 bytes of pixel data: about 200 bytes."""
    entries: list[tuple[int, int, int, int]] = []  # (tag, type, count, value)
    n_entries = 10
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * n_entries + 4
    bits_offset = data_offset + 8  # BitsPerSample (8, 8, 8) stored after the pixel bytes
    entries.append((256, LONG, 1, width))  # ImageWidth
    entries.append((257, LONG, 1, height))  # ImageLength
    entries.append((258, SHORT, 3, bits_offset))  # BitsPerSample -> offset
    entries.append((259, SHORT, 1, 1))  # Compression: none
    entries.append((262, SHORT, 1, 2))  # Photometric: RGB
    entries.append((277, SHORT, 1, 3))  # SamplesPerPixel
    if tiled:
        entries.append((322, SHORT, 1, 256))  # TileWidth
        entries.append((323, SHORT, 1, 256))  # TileLength
        entries.append((324, LONG, 1, data_offset))  # TileOffsets (one of many declared)
        entries.append((325, LONG, 1, 8))  # TileByteCounts
    else:
        entries.append((273, LONG, 1, data_offset))  # StripOffsets
        entries.append((278, LONG, 1, height))  # RowsPerStrip: one strip
        entries.append((279, LONG, 1, 8))  # StripByteCounts
        entries.append((284, SHORT, 1, 1))  # PlanarConfiguration: chunky
    entries.sort()
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if kind == SHORT and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0)  # no next IFD
    out += b"\0" * 8  # the only pixel bytes
    out += struct.pack("<HHH", 8, 8, 8)
    path.write_bytes(bytes(out))
    return path
