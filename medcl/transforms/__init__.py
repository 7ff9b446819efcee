"""Volume transforms (MONAI), patch and stain augmentations, views."""

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def plain_tensors() -> Iterator[None]:
    """Run MONAI transforms on plain tensors (no ``MetaTensor``), restoring the setting after.

    Jobs that do not need MONAI's metadata (2D slices, patches) run their augmentations about
    10x faster this way (measured on 64x64 slices: 3.7 ms against 39 ms per pair of views).
    """
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)
