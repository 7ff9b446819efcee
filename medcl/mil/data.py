"""Bags for multiple-instance learning: one slide = one bag of tile features.

A :class:`Bag` holds a slide's ``(N, D)`` features and its label; :func:`collate_bags` pads a list
of bags to the longest one with a mask (``True`` on real instances); :func:`load_bag` reads any
feature file layout :func:`medcl.wsi.bags.read_bag_file` knows; :func:`bags_from_manifest` reads a
CSV of bags with labels (and optional patients, the groups of cross-validation).

Class order is explicit: it comes from ``class_names`` when given, else from the sorted unique
label strings, and is saved with every model, so a label is never re-mapped silently.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from medcl.errors import InvalidInputError

MANIFEST_COLUMNS = ("bag", "label")


@dataclass
class Bag:
    """One bag (slide) of instance features.

    Attributes:
        features: ``(N, D)`` float32 instance features (N may be 0).
        label: the bag's class index.
        bag_id: the slide id.
        patient: the group used by cross-validation folds (defaults to ``bag_id``).
        instance_labels: optional ``(N,)`` int64 instance labels, ``-1`` where unknown.
        coords: optional ``(N, 2)`` int64 level-0 tile corners.
    """

    features: torch.Tensor
    label: int
    bag_id: str
    patient: str = ""
    instance_labels: torch.Tensor | None = None
    coords: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(
                f"bag {self.bag_id}: features must be (N, D), got {tuple(self.features.shape)}"
            )
        if not self.patient:
            self.patient = self.bag_id
        n = self.features.shape[0]
        if self.instance_labels is not None and tuple(self.instance_labels.shape) != (n,):
            raise ValueError(
                f"bag {self.bag_id}: instance_labels must be ({n},), "
                f"got {tuple(self.instance_labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class BagBatch:
    """Bags padded to a common length.

    Attributes:
        features: ``(B, Nmax, D)`` float32, zeros on padding.
        mask: ``(B, Nmax)`` bool, ``True`` on real instances.
        labels: ``(B,)`` int64 bag labels.
        instance_labels: ``(B, Nmax)`` int64, ``-1`` on padding and unknown instances.
        bag_ids: the ``B`` bag ids.
    """

    features: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    instance_labels: torch.Tensor
    bag_ids: list[str]

    def to(self, device: torch.device | str) -> BagBatch:
        """The batch with its tensors on ``device``."""
        return BagBatch(
            self.features.to(device),
            self.mask.to(device),
            self.labels.to(device),
            self.instance_labels.to(device),
            self.bag_ids,
        )


def collate_bags(bags: Sequence[Bag]) -> BagBatch:
    """Pad ``bags`` to the longest one; see :class:`BagBatch` for the shapes.

    Raises:
        ValueError: no bags, or bags of different feature dimensions.
    """
    if not bags:
        raise ValueError("collate_bags needs at least one bag")
    dims = {int(b.features.shape[1]) for b in bags}
    if len(dims) != 1:
        raise ValueError(f"bags have different feature dimensions: {sorted(dims)}")
    dim = dims.pop()
    labels = torch.tensor([int(b.label) for b in bags], dtype=torch.int64)
    if len(bags) == 1:  # one bag: no padding, so no copy (the features are only read)
        bag = bags[0]
        n = len(bag)
        inst = bag.instance_labels
        return BagBatch(
            bag.features.to(torch.float32).unsqueeze(0),
            torch.ones(1, n, dtype=torch.bool),
            labels,
            (torch.full((n,), -1, dtype=torch.int64) if inst is None else inst.to(torch.int64))
            .clone()
            .unsqueeze(0),
            [bag.bag_id],
        )
    n_max = max(len(b) for b in bags)
    features = torch.zeros(len(bags), n_max, dim, dtype=torch.float32)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    inst = torch.full((len(bags), n_max), -1, dtype=torch.int64)
    for i, bag in enumerate(bags):
        n = len(bag)
        features[i, :n] = bag.features.to(torch.float32)
        mask[i, :n] = True
        if bag.instance_labels is not None:
            inst[i, :n] = bag.instance_labels.to(torch.int64)
    return BagBatch(features, mask, labels, inst, [b.bag_id for b in bags])


def load_bag(
    path: str | PathLike[str],
    label: int = 0,
    bag_id: str | None = None,
    patient: str | None = None,
) -> Bag:
    """Read one bag file (medcl / CLAM / TRIDENT h5, CLAM ``.pt``, mopadi h5).

    ``bag_id`` defaults to the file name without extension, ``patient`` to ``bag_id``.

    Raises:
        InvalidInputError: the file is missing or not a readable bag.
    """
    from medcl.wsi.bags import read_bag_file  # the reader lives with the feature writer

    p = Path(path)
    stored = read_bag_file(p)
    name = bag_id or p.stem
    return Bag(
        features=torch.from_numpy(np.ascontiguousarray(stored.features, dtype=np.float32)),
        label=int(label),
        bag_id=name,
        patient=patient or name,
        coords=stored.coords,
    )


def infer_n_classes(bags: Sequence[Bag], class_names: Sequence[str] | None = None) -> int:
    """``len(class_names)`` when given, else ``max(label) + 1`` over ``bags`` (at least 2)."""
    if class_names:
        return len(class_names)
    return max(2, 1 + max((b.label for b in bags), default=0))


def class_map(labels: Sequence[str], class_names: Sequence[str] | None = None) -> list[str]:
    """The class order: ``class_names`` when given, else the sorted unique ``labels``.

    Raises:
        ValueError: a label missing from ``class_names``, or duplicated class names.
    """
    if class_names is None:
        return sorted({str(x) for x in labels})
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    unknown = sorted({str(x) for x in labels} - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {names}")
    return names


def bags_from_manifest(
    csv_path: str | PathLike[str],
    class_names: Sequence[str] | None = None,
) -> tuple[list[Bag], list[str]]:
    """Read a manifest CSV (columns ``bag``, ``label``, optional ``patient``, ``bag_id``) and its
    bags.

    ``bag`` paths are relative to the CSV's folder unless absolute; ``label`` is a class name
    (any string); ``bag_id`` defaults to the bag file's name without extension. Returns the bags
    and the class names (index = class label of the bags).

    Raises:
        InvalidInputError: the CSV is missing, lacks a column, is empty, has an empty label or a
            repeated bag, a label is not in ``class_names``, or a bag file cannot be read.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InvalidInputError(path, "manifest CSV not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in MANIFEST_COLUMNS if c not in fields]
        if missing:
            raise InvalidInputError(
                path, f"manifest needs columns bag,label; missing {','.join(missing)}"
            )
        rows = [r for r in reader if any((v or "").strip() for v in r.values())]
    if not rows:
        raise InvalidInputError(path, "manifest lists no bags")
    labels = [(r["label"] or "").strip() for r in rows]
    for i, lab in enumerate(labels):
        if not lab:
            raise InvalidInputError(path, f"row {i + 2} has an empty label")
    try:
        names = class_map(labels, class_names)
    except ValueError as exc:
        raise InvalidInputError(path, str(exc)) from None
    index = {name: i for i, name in enumerate(names)}
    bags = []
    seen: set[str] = set()
    for row, lab in zip(rows, labels, strict=True):
        bag_path = Path((row["bag"] or "").strip())
        if not bag_path.is_absolute():
            bag_path = path.parent / bag_path
        bag_id = (row.get("bag_id") or "").strip() or bag_path.stem
        if bag_id in seen:
            raise InvalidInputError(
                path, f"bag id '{bag_id}' appears twice (add a bag_id column to tell them apart)"
            )
        seen.add(bag_id)
        patient = (row.get("patient") or "").strip() or None
        bags.append(load_bag(bag_path, index[lab], bag_id=bag_id, patient=patient))
    return bags, names
