"""Group-aware splits: no patient, lesion or slide ever lands in two splits.

Pure functions on arrays, with the JSON reader and writer at the end. Sizes are fractions of
*images*; whole groups are assigned, so the realised fractions are close to, not exactly, the
targets. With stratification each group gets one label (its most frequent, ties broken by the
first seen) and the groups of each label are dealt out separately, so class proportions survive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medcl.errors import InvalidInputError

SPLIT_NAMES = ("train", "val", "test")
_FORMAT = "medcl-split/1"


def _group_table(
    groups: ArrayLike, labels: ArrayLike | None, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image group index, and per group: id, size and stratum.

    Returns:
        ``(inverse (N,), group_ids (G,), sizes (G,), strata (G,))``.
    """
    g = np.asarray(groups).astype(str)
    if g.ndim != 1 or g.size == 0:
        raise ValueError("groups must be a non-empty 1-D sequence")
    group_ids, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(group_ids))
    strata = np.zeros(len(group_ids), dtype=np.int64)
    if stratify and labels is not None:
        lab = np.asarray(labels).astype(str)
        if lab.shape != g.shape:
            raise ValueError(f"labels has shape {lab.shape}, groups {g.shape}")
        _, lab_idx = np.unique(lab, return_inverse=True)
        counts = np.zeros((len(group_ids), lab_idx.max() + 1), dtype=np.int64)
        np.add.at(counts, (inverse, lab_idx), 1)
        best = counts.max(axis=1, keepdims=True)
        # ties: the label of the group's first image if tied, else the smallest index
        first_lab = lab_idx[first]
        tie_first = counts[np.arange(len(group_ids)), first_lab] == best[:, 0]
        strata = np.where(tie_first, first_lab, counts.argmax(axis=1))
    return inverse, group_ids, sizes, strata


def _deal(
    sizes: np.ndarray, strata: np.ndarray, fractions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Assign each group to a bin so each stratum's images follow ``fractions``.

    Groups of a stratum are shuffled, taken largest first (random order among equal sizes), and
    each goes to the bin furthest below its target image count. Returns ``(G,)`` bin indices.
    """
    assign = np.full(len(sizes), -1, dtype=np.int64)
    total = np.zeros(len(fractions))  # images per bin over all strata: breaks ties
    usable = fractions > 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-sizes[members], kind="stable")]
        target = fractions * sizes[members].sum()
        filled = np.zeros(len(fractions))
        for m in members:
            deficit = np.where(usable, np.round(target - filled, 9), -np.inf)
            load = np.where(usable, total / np.where(usable, fractions, 1.0), np.inf)
            b = int(np.lexsort((load, -deficit))[0])  # largest deficit, then least loaded
            assign[m] = b
            filled[b] += sizes[m]
            total[b] += sizes[m]
    return assign


def group_split(
    groups: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
    stratify: bool = True,
) -> dict[str, np.ndarray]:
    """Split image indices into train / val / test with no group in two splits.

    Args:
        groups: ``(N,)`` group id of each image (patient, lesion, slide).
        labels: ``(N,)`` class of each image; used for stratification.
        test_size: target fraction of images in 'test'.
        val_size: target fraction of images in 'val' (may be 0: 'val' is then empty).
        seed: the split is a function of the inputs and ``seed``.
        stratify: keep each class's proportions in every split (needs ``labels``).

    Returns:
        ``{'train', 'val', 'test'}`` -> sorted int64 index arrays; together they cover
        ``0..N-1`` exactly once.
    """
    if not (0.0 <= test_size < 1.0 and 0.0 <= val_size < 1.0 and test_size + val_size < 1.0):
        raise ValueError(
            f"need 0 <= test_size, val_size and their sum < 1; got {test_size}, {val_size}"
        )
    inverse, _, sizes, strata = _group_table(groups, labels, stratify)
    fractions = np.array([1.0 - test_size - val_size, val_size, test_size])
    assign = _deal(sizes, strata, fractions, np.random.default_rng(seed))
    per_image = assign[inverse]
    return {name: np.flatnonzero(per_image == b) for b, name in enumerate(SPLIT_NAMES)}


def group_kfold(
    groups: ArrayLike, labels: ArrayLike | None = None, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds of (train, test) index arrays; each group is in exactly one test fold.

    Stratified by group label when ``labels`` is given. Every image is tested exactly once.
    """
    inverse, group_ids, sizes, strata = _group_table(groups, labels, labels is not None)
    if k < 2 or k > len(group_ids):
        raise ValueError(
            f"k must be between 2 and the number of groups ({len(group_ids)}); got {k}"
        )
    assign = _deal(sizes, strata, np.full(k, 1.0 / k), np.random.default_rng(seed))
    if len(np.unique(assign)) < k:
        raise ValueError(f"could not give each of the {k} folds a group; use a smaller k")
    per_image = assign[inverse]
    folds = []
    for f in range(k):
        test = np.flatnonzero(per_image == f)
        folds.append((np.flatnonzero(per_image != f), test))
    return folds


def check_no_leak(split: Mapping[str, np.ndarray | Sequence[int]], groups: ArrayLike) -> None:
    """Raise ``ValueError`` if a group has images in two splits or an index repeats.

    Args:
        split: split name -> image indices.
        groups: ``(N,)`` group id of each image.
    """
    g = np.asarray(groups).astype(str)
    owner: dict[str, str] = {}
    seen: set[int] = set()
    crossing: list[str] = []
    for name, idx in split.items():
        arr = np.asarray(idx, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= len(g)):
            raise ValueError(f"split '{name}' has indices outside 0..{len(g) - 1}")
        dup = seen.intersection(arr.tolist())
        if dup or len(np.unique(arr)) != len(arr):
            raise ValueError(f"split '{name}' repeats image indices (e.g. {sorted(dup)[:5]})")
        seen.update(arr.tolist())
        for gid in np.unique(g[arr]):
            other = owner.setdefault(str(gid), name)
            if other != name:
                crossing.append(f"{gid} ({other}, {name})")
    if crossing:
        shown = ", ".join(crossing[:5])
        raise ValueError(f"{len(crossing)} group(s) are in more than one split: {shown}")


def save_split(
    split: Mapping[str, np.ndarray | Sequence[int]],
    path: str | os.PathLike[str],
    *,
    groups: ArrayLike,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``split`` as JSON with each split's group ids, so a reload can be verified.

    Args:
        split: split name -> image indices.
        path: the JSON file to write.
        groups: ``(N,)`` group id of each image.
        meta: extra JSON-safe facts to record (seed, sizes, source manifest).
    """
    check_no_leak(split, groups)
    g = np.asarray(groups).astype(str)
    doc = {
        "format": _FORMAT,
        "n_images": len(g),
        "meta": dict(meta or {}),
        "indices": {k: [int(i) for i in np.sort(np.asarray(v))] for k, v in split.items()},
        "groups": {
            k: sorted({str(x) for x in g[np.asarray(v, dtype=np.int64)]}) for k, v in split.items()
        },
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return out


def load_split(
    path: str | os.PathLike[str], groups: ArrayLike | None = None
) -> dict[str, np.ndarray]:
    """Read a split written by :func:`save_split`.

    With ``groups`` (the data the split is applied to) the split is verified: same number of
    images, the same group ids in each split, and no leak; a mismatch raises
    :class:`InvalidInputError` naming the file.
    """
    src = Path(path)
    if not src.is_file():
        raise InvalidInputError(src, "split file not found")
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
        if doc.get("format") != _FORMAT:
            raise InvalidInputError(src, f"not a medcl split file (format {doc.get('format')!r})")
        split = {str(k): np.asarray(v, dtype=np.int64) for k, v in doc["indices"].items()}
        saved_groups = {str(k): list(v) for k, v in doc["groups"].items()}
        n_images = int(doc["n_images"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise InvalidInputError(src, f"not a valid split JSON file ({exc!r})") from None
    if groups is not None:
        g = np.asarray(groups).astype(str)
        if len(g) != n_images:
            raise InvalidInputError(
                src, f"split was made for {n_images} images, the data has {len(g)}"
            )
        try:
            check_no_leak(split, g)
        except ValueError as exc:
            raise InvalidInputError(src, str(exc)) from None
        for name, idx in split.items():
            now = sorted({str(x) for x in g[idx]})
            if now != saved_groups.get(name):
                raise InvalidInputError(
                    src, f"split '{name}' holds other groups than when it was saved (data changed?)"
                )
    return split
