"""Images in one folder per class (torchvision's ImageFolder layout), optionally per domain.

Layouts::

    root/<class>/*.png|jpg|...                  domain 'default'
    root/<domain>/<class>/*.png|jpg|...          with ``domain_level=True``

Files in sub-folders of a class folder belong to that class. Group = the file stem, or the
first capture group (else the whole match) of ``group_regex`` searched in the file name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medcl.errors import InvalidInputError
from medcl.io.images import DEFAULT_DOMAIN, IMAGE_SETS, ImageSet

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
    )


def looks_like_class_folders(root: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> bool:
    """True if some direct sub-folder of ``root`` holds images (at any depth)."""
    ext = tuple(e.lower() for e in extensions)
    return any(
        any(p.suffix.lower() in ext for p in d.rglob("*") if p.is_file()) for d in _subdirs(root)
    )


@IMAGE_SETS.register(
    "class_folders",
    recognise=lambda p: p.is_dir() and looks_like_class_folders(p),
    describe="a folder of class sub-folders",
    priority=90,  # any folder with images in sub-folders: asked after the specific layouts
)
def load_class_folders(
    root: str | os.PathLike[str],
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    domain_level: bool = False,
    group_regex: str | None = None,
) -> ImageSet:
    """Load ``root/<class>/...`` (or ``root/<domain>/<class>/...``) as an :class:`ImageSet`.

    Args:
        root: the top folder.
        extensions: file suffixes counted as images (case-insensitive).
        domain_level: the first folder level names the domain, the second the class.
        group_regex: regex searched in each file name to get its group (e.g. ``r"^(P\\d+)_"``
            for patient ids); a file it does not match is an error.

    Returns:
        An :class:`ImageSet`; the class map is the sorted class folder names (empty class folders
        are kept in the map, with a warning).
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInputError(base, "not a folder")
    ext = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    pattern = re.compile(group_regex) if group_regex is not None else None
    domain_dirs = [(d.name, d) for d in _subdirs(base)] if domain_level else [(None, base)]
    if not domain_dirs:
        raise InvalidInputError(base, "no domain sub-folders (expected root/<domain>/<class>/)")
    rows: list[dict[str, str]] = []
    classes: set[str] = set()
    for domain, ddir in domain_dirs:
        class_dirs = _subdirs(ddir)
        if not class_dirs:
            raise InvalidInputError(ddir, "no class sub-folders (expected <class>/<image files>)")
        for cdir in class_dirs:
            classes.add(cdir.name)
            files = _images(cdir, ext)
            if not files:
                logger.warning("%s: class folder has no images with suffix %s", cdir, ext)
            for f in files:
                rows.append(
                    {
                        "path": str(f),
                        "label": cdir.name,
                        "domain": domain or DEFAULT_DOMAIN,
                        "group": _group_of(f, pattern),
                    }
                )
    if not rows:
        raise InvalidInputError(base, f"no image files with suffix {', '.join(ext)} found")
    class_map = {c: i for i, c in enumerate(sorted(classes))}
    out = ImageSet(pd.DataFrame(rows), root=base, name=base.name, class_map=class_map)
    logger.info("loaded %s", out)
    return out


def _group_of(path: Path, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return path.stem
    m = pattern.search(path.name)
    if m is None:
        raise InvalidInputError(path, f"file name does not match group_regex {pattern.pattern!r}")
    return m.group(1) if m.groups() else m.group(0)
