"""Camelyon17-WILDS lymph-node patches (96x96 PNG) in the WILDS layout.

Layout::

    root/metadata.csv   [index,]patient,node,x_coord,y_coord,tumor,slide,center,split
    root/patches/patient_{patient:03d}_node_{node}/
        patch_patient_{patient:03d}_node_{node}_x_{x}_y_{y}.png

Label = ``tumor`` (0 -> 'normal', 1 -> 'tumor'); domain = the hospital (``center``, or a
``hospital`` column) as a string; group = the slide (``slide_<n>``) or the patient
(``patient_<nnn>``), so a split never divides one. Koh et al., "WILDS", ICML 2021;
Bandi et al., "From detection of individual metastases to classification of lymph node status
at the patient level: the CAMELYON17 challenge", IEEE TMI 38(2), 2019.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import pandas as pd

from medcl.errors import InvalidInputError
from medcl.io.images import IMAGE_SETS, ImageSet, describe_missing

logger = logging.getLogger(__name__)

CAMELYON17_CLASSES = {"normal": 0, "tumor": 1}
_INT_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "slide")


def patch_relpath(patient: int, node: int, x: int, y: int) -> str:
    """The WILDS path of one patch, relative to the dataset root."""
    folder = f"patient_{patient:03d}_node_{node}"
    return f"patches/{folder}/patch_{folder}_x_{x}_y_{y}.png"


def _int_column(df: pd.DataFrame, col: str, src: Path) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 1
        raise InvalidInputError(
            src, f"row {row}: column {col} must be an integer, got {df[col].iloc[row - 1]!r}"
        )
    return values.astype("int64")


@IMAGE_SETS.register(
    "camelyon17",
    recognise=lambda p: (p / "metadata.csv").is_file() and (p / "patches").is_dir(),
    describe="a Camelyon17-WILDS folder (metadata.csv + patches/)",
    priority=20,
)
def load_camelyon17(
    root: str | os.PathLike[str],
    *,
    group_by: Literal["slide", "patient"] = "slide",
    check_files: bool = True,
) -> ImageSet:
    """Load Camelyon17-WILDS patches from ``root``.

    Args:
        root: folder holding ``metadata.csv`` and ``patches/``.
        group_by: 'slide' (default) or 'patient': the unit a split keeps together.
        check_files: raise if listed patches are missing (count and first few names).

    Returns:
        An :class:`ImageSet` with class map ``{'normal': 0, 'tumor': 1}``; metadata columns
        (patient, node, x_coord, y_coord, slide, center, split, ...) are kept.
    """
    if group_by not in ("slide", "patient"):
        raise ValueError(f"group_by must be 'slide' or 'patient', got {group_by!r}")
    base = Path(root)
    src = base / "metadata.csv"
    if not src.is_file():
        raise InvalidInputError(base, "no metadata.csv found (not a Camelyon17-WILDS folder)")
    try:
        meta = pd.read_csv(src, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(src, f"cannot read the metadata CSV ({exc})") from None
    meta = meta.drop(columns=[c for c in meta.columns if c == "" or c.startswith("Unnamed:")])
    hospital = "center" if "center" in meta.columns else "hospital"
    missing = [c for c in (*_INT_COLUMNS, hospital) if c not in meta.columns]
    if missing:
        raise InvalidInputError(
            src,
            f"missing column(s) {', '.join(missing)} (found: {', '.join(meta.columns)}; "
            "the hospital may be called center or hospital)",
        )
    if meta.empty:
        raise InvalidInputError(src, "metadata has a header but no rows")
    ints = {c: _int_column(meta, c, src) for c in _INT_COLUMNS}
    bad_tumor = ~ints["tumor"].isin([0, 1])
    if bad_tumor.any():
        row = int(bad_tumor.to_numpy().argmax()) + 1
        raise InvalidInputError(
            src, f"row {row}: tumor must be 0 or 1, got {ints['tumor'][row - 1]}"
        )

    rel = [
        patch_relpath(p, n, x, y)
        for p, n, x, y in zip(
            ints["patient"], ints["node"], ints["x_coord"], ints["y_coord"], strict=True
        )
    ]
    if check_files:
        present: set[str] = set()
        for folder in {r.rsplit("/", 1)[0] for r in rel}:
            if (base / folder).is_dir():
                present.update(f"{folder}/{f.name}" for f in (base / folder).iterdir())
        absent = [r.rsplit("/", 1)[1] for r in rel if r not in present]
        if absent:
            raise InvalidInputError(src, describe_missing(base / "patches", absent, len(rel)))

    df = meta.copy()
    for c, values in ints.items():
        df[c] = values
    df.insert(0, "path", [str(base / r) for r in rel])
    df.insert(1, "label", ints["tumor"].map({0: "normal", 1: "tumor"}))
    df.insert(2, "domain", meta[hospital].str.strip())
    if group_by == "slide":
        group = [f"slide_{s}" for s in ints["slide"]]
    else:
        group = [f"patient_{p:03d}" for p in ints["patient"]]
    df.insert(3, "group", group)
    out = ImageSet(df, root=base, name="camelyon17", class_map=CAMELYON17_CLASSES)
    logger.info("loaded %s", out)
    return out
