"""HAM10000 dermoscopy images in their published layout.

Layout::

    root/HAM10000_metadata.csv     lesion_id,image_id,dx,dx_type,age,sex,localization
    root/images/ISIC_*.jpg         (or the official HAM10000_images_part_1/ and _part_2/)

Label = ``dx``; group = ``lesion_id`` (several images show one lesion: split by lesion, never by
image); domain = a metadata column, ``localization`` (body site) by default. Metadata columns are
kept. Tschandl et al., "The HAM10000 dataset", Sci. Data 5, 180161 (2018).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from medcl.errors import InvalidInputError
from medcl.io.images import IMAGE_SETS, ImageSet, describe_missing

logger = logging.getLogger(__name__)

METADATA_FILE = "HAM10000_metadata.csv"
PART_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_REQUIRED = ("lesion_id", "image_id", "dx")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _index_images(folders: list[Path]) -> dict[str, Path]:
    """image_id (file stem) -> path for every image file in ``folders`` (first folder wins)."""
    found: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = Path(entry.name)
                if name.suffix.lower() in _IMAGE_SUFFIXES and name.stem not in found:
                    found[name.stem] = Path(entry.path)
    return found


@IMAGE_SETS.register(
    "ham10000",
    recognise=lambda p: (p / "HAM10000_metadata.csv").is_file(),
    describe="a HAM10000 folder (HAM10000_metadata.csv)",
    priority=10,
)
def load_ham10000(
    root: str | os.PathLike[str],
    *,
    domain_column: str = "localization",
    images_dir: str = "images",
    check_files: bool = True,
) -> ImageSet:
    """Load HAM10000 (full or a subset) from ``root``.

    Args:
        root: folder holding ``HAM10000_metadata.csv``.
        domain_column: metadata column used as the domain ('localization', 'dx_type', 'sex').
            Empty values become 'unknown'; 'unknown' stays a domain of its own.
        images_dir: folder of ``<image_id>.jpg`` under ``root``; the official part folders are
            searched too.
        check_files: raise if a listed image is missing (count and first few ids).

    Returns:
        An :class:`ImageSet` whose class map is the 7 standard classes in sorted order
        (akiec 0 ... vasc 6); other ``dx`` values are logged and appended after them.
    """
    base = Path(root)
    csv_path = base / METADATA_FILE
    if not csv_path.is_file():
        raise InvalidInputError(base, f"no {METADATA_FILE} found (not a HAM10000 folder)")
    try:
        meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(csv_path, f"cannot read the metadata CSV ({exc})") from None
    needed = [*_REQUIRED, domain_column]
    missing = [c for c in needed if c not in meta.columns]
    if missing:
        raise InvalidInputError(
            csv_path,
            f"missing column(s) {', '.join(missing)} (found: {', '.join(meta.columns)})",
        )
    if meta.empty:
        raise InvalidInputError(csv_path, "metadata has a header but no rows")
    dup = meta["image_id"][meta["image_id"].duplicated()]
    if not dup.empty:
        raise InvalidInputError(csv_path, f"image_id listed twice: {', '.join(dup.iloc[:5])}")

    folders = [base / d for d in (images_dir, *PART_DIRS) if (base / d).is_dir()]
    index = _index_images(folders)
    default_dir = base / images_dir
    absent = [i for i in meta["image_id"] if i not in index]
    if absent and check_files:
        where = ", ".join(str(f) for f in folders) if folders else str(default_dir)
        raise InvalidInputError(csv_path, describe_missing(where, absent, len(meta)))

    df = meta.copy()
    df.insert(0, "path", [str(index.get(i, default_dir / f"{i}.jpg")) for i in meta["image_id"]])
    df.insert(1, "label", meta["dx"].str.strip())
    df.insert(2, "domain", meta[domain_column].str.strip().replace("", "unknown"))
    df.insert(3, "group", meta["lesion_id"].str.strip())
    if "age" in df.columns:
        df["age"] = pd.to_numeric(df["age"], errors="coerce")

    extra = sorted(set(df["label"]) - set(HAM10000_CLASSES))
    if extra:
        logger.warning("%s: dx values outside the 7 HAM10000 classes: %s", csv_path, extra)
    class_map = {c: i for i, c in enumerate((*HAM10000_CLASSES, *extra))}
    out = ImageSet(df, root=base, name="ham10000", class_map=class_map)
    logger.info("loaded %s", out)
    return out
