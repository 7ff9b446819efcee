"""Size limits checked against what a file's header declares, before anything is allocated.

A header can claim any size: a 348-byte NIfTI header 30000^3 voxels, a 206-byte TIFF 100000^2
pixels. The readers compare the declared counts with these caps (and with what the file's size
can hold) first, so a lying or damaged header is a one-line :class:`InvalidInputError` instead of
a ``MemoryError`` or ``OverflowError`` deep inside a decoder.

=========================  ===========================  ==========================================
environment variable       default                      what it caps
=========================  ===========================  ==========================================
``MEDCL_MAX_VOXELS``       2**30 (1.07e9; 4 GiB float)  voxels of one volume (one frame) read
``MEDCL_MAX_PIXELS``       2**28 (2.7e8; 805 MB RGB)    pixels of one 2D image or slide region
                                                        decoded into memory at once
``MEDCL_MAX_SLIDE_PIXELS`` 2**40 (1.1e12)               level-0 pixels a slide may declare (it is
                                                        read by tiles, never whole)
=========================  ===========================  ==========================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from os import PathLike

from medcl.errors import ConfigError, InvalidInputError

DEFAULT_MAX_VOXELS = 2**30
DEFAULT_MAX_PIXELS = 2**28
DEFAULT_MAX_SLIDE_PIXELS = 2**40

# The most any codec a TIFF or NIfTI may use can shrink data: deflate/gzip stops near 1032:1,
# LZW near 2730:1. Twice the larger is still far below what a lying header declares.
MAX_COMPRESSION_RATIO = 6000


def _limit(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise ConfigError(name, None, f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise ConfigError(name, None, f"must be positive, got {text!r}")
    return value


def max_voxels() -> int:
    """``MEDCL_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`."""
    return _limit("MEDCL_MAX_VOXELS", DEFAULT_MAX_VOXELS)


def max_pixels() -> int:
    """``MEDCL_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    return _limit("MEDCL_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_slide_pixels() -> int:
    """``MEDCL_MAX_SLIDE_PIXELS`` or :data:`DEFAULT_MAX_SLIDE_PIXELS`."""
    return _limit("MEDCL_MAX_SLIDE_PIXELS", DEFAULT_MAX_SLIDE_PIXELS)


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def check_dimensions(path: str | PathLike[str], shape: Sequence[object], what: str) -> list[int]:
    """Every entry of ``shape`` as a positive int, else :class:`InvalidInputError`.

    ``what`` names the dimensions in the message (``"voxel dimensions"``, ``"level 0 size"``).
    """
    out: list[int] = []
    for axis, value in enumerate(shape):
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or number != value or number < 1:
            raise InvalidInputError(
                path,
                f"header declares {what} {tuple(shape)}: dimension {axis} is {value}, "
                "expected a positive whole number (damaged or hand-made header)",
            )
        out.append(number)
    return out


def check_count(
    path: str | PathLike[str],
    shape: Sequence[int],
    *,
    limit: int,
    unit: str,
    variable: str,
) -> int:
    """``prod(shape)``; :class:`InvalidInputError` when it exceeds ``limit`` (named by the
    environment ``variable`` that raises it)."""
    count = math.prod(int(s) for s in shape)
    if count > limit:
        raise InvalidInputError(
            path,
            f"header declares {_shape_text(shape)} = {count:,} {unit}, more than the "
            f"{limit:,} allowed (set {variable} to raise the limit)",
        )
    return count


def check_fits_file(
    path: str | PathLike[str],
    declared_bytes: int,
    file_bytes: int,
    *,
    compressed: bool,
    what: str = "image data",
) -> None:
    """:class:`InvalidInputError` when a file of ``file_bytes`` cannot hold ``declared_bytes``
    (uncompressed: fewer bytes than declared; compressed: beyond :data:`MAX_COMPRESSION_RATIO`)."""
    capacity = file_bytes * (MAX_COMPRESSION_RATIO if compressed else 1)
    if declared_bytes > capacity:
        how = "even compressed " if compressed else ""
        raise InvalidInputError(
            path,
            f"header declares {declared_bytes:,} bytes of {what}, which {how}cannot fit in a "
            f"file of {file_bytes:,} bytes (truncated file or damaged header)",
        )
