"""Multiple-instance bags built from labelled images (the HAM10000 MIL benchmark).

HAM10000 has no slides, but its images make a controlled MIL problem with known instance labels:
a *bag* is a set of dermoscopy images, *positive* when it holds at least one melanoma ("witness"),
negative when it holds none. The witness rate of a positive bag (melanoma images / bag size) is
drawn in a chosen range, so low rates mimic a slide where a few tiles carry the tumour.

Rules (all pure numpy, deterministic for a given ``seed``):

* Instances are indices into the image arrays (``labels``/``groups``), so bags of every split
  index the same feature matrix.
* Images of one bag are distinct; an image may be reused by several bags *of the same split*
  (bags are samples, the pool is finite).
* :func:`split_by_group` assigns whole lesions (``groups``) to train/val/test first and bags
  are then built inside each split, so no lesion, hence no image, is shared by two splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from medcl.io.splits import SPLIT_NAMES, group_split

if TYPE_CHECKING:
    from medcl.mil.data import Bag


@dataclass(frozen=True)
class BagSpec:
    """One bag: which images it holds and their labels.

    Attributes:
        indices: ``(n,)`` int64 image indices (distinct).
        label: 1 when the bag holds at least one positive-class image, else 0.
        instance_labels: ``(n,)`` int64, 1 for positive-class images, else 0.
        bag_id: name of the bag (``<split>_<k>`` from :func:`make_split_bags`).
    """

    indices: np.ndarray
    label: int
    instance_labels: np.ndarray
    bag_id: str = field(default="")

    @property
    def witness_rate(self) -> float:
        """Share of positive-class images in the bag."""
        return float(self.instance_labels.mean()) if len(self.indices) else 0.0


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    lo, hi = value
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got {value}")


def _witness_choices(size: int, rate: tuple[float, float]) -> tuple[int, int]:
    """Smallest and largest witness count ``w >= 1`` with ``rate[0] <= w / size <= rate[1]``."""
    lo = max(1, math.ceil(rate[0] * size - 1e-9))
    hi = math.floor(rate[1] * size + 1e-9)
    return lo, hi


def make_mil_bags(
    labels: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    positive_class: str = "mel",
    n_bags: int,
    bag_size: tuple[int, int] = (20, 100),
    witness_rate: tuple[float, float] = (0.05, 0.20),
    positive_fraction: float = 0.5,
    seed: int = 0,
    pool: ArrayLike | None = None,
    prefix: str = "bag",
) -> list[BagSpec]:
    """Sample ``n_bags`` MIL bags from labelled images.

    Args:
        labels: ``(N,)`` class name of each image (e.g. HAM10000 ``dx``).
        groups: ``(N,)`` group (lesion id) of each image; only checked for shape here, splits
            by group are made by :func:`split_by_group` / :func:`make_split_bags`.
        positive_class: the class whose images are witnesses (``"mel"``).
        n_bags: number of bags; ``round(n_bags * positive_fraction)`` are positive, shuffled.
        bag_size: inclusive range of bag sizes, drawn uniformly among the sizes that admit a
            witness count in ``witness_rate`` (for positive bags).
        witness_rate: inclusive range of positive-image shares in a positive bag; the count is
            drawn uniformly among the integers ``w >= 1`` meeting it, so every positive bag has
            at least one witness and an exact rate inside the range.
        positive_fraction: share of positive bags.
        seed: the bags are a function of the inputs and ``seed``.
        pool: image indices allowed in the bags (one split); default all images.
        prefix: bag ids are ``<prefix>_<k>``.

    Returns:
        The bags, in a shuffled order of positives and negatives.

    Raises:
        ValueError: bad ranges, or too few positive / negative images in ``pool`` for the
            largest bag.
    """
    lab = np.asarray(labels).astype(str)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if groups is not None and np.asarray(groups).shape != lab.shape:
        raise ValueError(f"groups has shape {np.asarray(groups).shape}, labels {lab.shape}")
    if n_bags < 1:
        raise ValueError(f"n_bags must be >= 1, got {n_bags}")
    if not (0.0 <= positive_fraction <= 1.0):
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if not (1 <= bag_size[0] <= bag_size[1]):
        raise ValueError(f"bag_size must satisfy 1 <= low <= high, got {bag_size}")
    _check_range("witness_rate", witness_rate, 0.0, 1.0)

    idx = np.arange(len(lab)) if pool is None else np.unique(np.asarray(pool, dtype=np.int64))
    is_pos = lab[idx] == positive_class
    pos_pool, neg_pool = idx[is_pos], idx[~is_pos]
    n_pos_bags = round(n_bags * positive_fraction)
    # sizes usable by a positive bag: at least one witness count w in the rate range, with
    # enough positive images for w and negative images for size - w
    usable: list[int] = []
    for size in range(bag_size[0], bag_size[1] + 1):
        w_lo, w_hi = _witness_choices(size, witness_rate)
        if w_lo <= min(w_hi, len(pos_pool)) and size - w_lo <= len(neg_pool):
            usable.append(size)
    if n_pos_bags and not usable:
        raise ValueError(
            f"no positive bag possible: bag_size {bag_size}, witness_rate {witness_rate}, "
            f"{len(pos_pool)} '{positive_class}' and {len(neg_pool)} other images in the pool"
        )
    if n_bags - n_pos_bags and len(neg_pool) < bag_size[0]:
        raise ValueError(
            f"no negative bag possible: {len(neg_pool)} non-'{positive_class}' images in the "
            f"pool, bags need at least {bag_size[0]}"
        )

    rng = np.random.default_rng(seed)
    kinds = np.array([1] * n_pos_bags + [0] * (n_bags - n_pos_bags))[rng.permutation(n_bags)]
    bags: list[BagSpec] = []
    for k, kind in enumerate(kinds):
        if kind == 1:
            n = int(rng.choice(usable))
            w_lo, w_hi = _witness_choices(n, witness_rate)
            w_hi = min(w_hi, len(pos_pool), n)
            w_lo = max(w_lo, n - len(neg_pool))
            w = int(rng.integers(w_lo, w_hi + 1))
            chosen = np.concatenate(
                [
                    rng.choice(pos_pool, size=w, replace=False),
                    rng.choice(neg_pool, size=n - w, replace=False),
                ]
            )
        else:
            n = int(rng.integers(bag_size[0], min(bag_size[1], len(neg_pool)) + 1))
            chosen = rng.choice(neg_pool, size=n, replace=False)
        chosen = chosen[rng.permutation(n)].astype(np.int64)
        inst = (lab[chosen] == positive_class).astype(np.int64)
        bags.append(BagSpec(chosen, int(inst.any()), inst, f"{prefix}_{k}"))
    return bags


def split_by_group(
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    positive_class: str = "mel",
    val_size: float = 0.2,
    test_size: float = 0.2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Image indices of train / val / test with every lesion in exactly one split.

    Lesions are stratified by whether they are ``positive_class`` so each split gets its share
    of melanoma lesions (see :func:`medcl.io.splits.group_split`).

    Returns:
        ``{'train', 'val', 'test'}`` -> sorted int64 index arrays covering ``0..N-1`` once.
    """
    lab = np.asarray(labels).astype(str)
    strata = np.where(lab == positive_class, positive_class, "other")
    return group_split(
        groups, strata, test_size=test_size, val_size=val_size, seed=seed, stratify=True
    )


def make_split_bags(
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    n_bags: Mapping[str, int],
    positive_class: str = "mel",
    bag_size: tuple[int, int] = (20, 100),
    witness_rate: tuple[float, float] = (0.05, 0.20),
    positive_fraction: float = 0.5,
    val_size: float = 0.2,
    test_size: float = 0.2,
    seed: int = 0,
) -> dict[str, list[BagSpec]]:
    """Split by lesion, then build ``n_bags[split]`` bags inside each split.

    Bag ids are ``<split>_<k>``. Each split uses its own random stream derived from ``seed``,
    so changing the number of bags of one split leaves the others unchanged.

    Returns:
        ``{split: bags}`` for the splits named in ``n_bags`` (a subset of train/val/test).
    """
    unknown = sorted(set(n_bags) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {', '.join(SPLIT_NAMES)}")
    split = split_by_group(
        labels,
        groups,
        positive_class=positive_class,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
    )
    out: dict[str, list[BagSpec]] = {}
    for i, name in enumerate(SPLIT_NAMES):
        if name not in n_bags:
            continue
        out[name] = make_mil_bags(
            labels,
            groups,
            positive_class=positive_class,
            n_bags=n_bags[name],
            bag_size=bag_size,
            witness_rate=witness_rate,
            positive_fraction=positive_fraction,
            seed=seed * 1000 + i + 1,
            pool=split[name],
            prefix=name,
        )
    return out


def bag_groups(bags: Sequence[BagSpec], groups: ArrayLike) -> set[str]:
    """Every group (lesion id) that appears in ``bags``."""
    g = np.asarray(groups).astype(str)
    return {str(x) for bag in bags for x in g[bag.indices]}


def bags_from_specs(specs: Sequence[BagSpec], features: np.ndarray) -> list[Bag]:
    """MIL :class:`~medcl.mil.data.Bag` objects from bag specs and per-image features.

    Args:
        specs: bags from :func:`make_mil_bags` / :func:`make_split_bags`.
        features: ``(N_images, D)`` float features of every image, indexed by the specs.

    Returns:
        One ``Bag`` per spec: features ``(n, D)`` float32, the bag label, instance labels and
        ``patient`` = ``bag_id`` (bags are independent samples).
    """
    import torch

    from medcl.mil.data import Bag

    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    return [
        Bag(
            features=torch.from_numpy(feats[s.indices]),
            label=s.label,
            bag_id=s.bag_id,
            patient=s.bag_id,
            instance_labels=torch.from_numpy(s.instance_labels.copy()),
        )
        for s in specs
    ]
