"""HAM10000-style MIL bags: label iff a witness, witness rate, sizes, no lesion across splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcl.mil.ham_bags import (
    BagSpec,
    bag_groups,
    make_mil_bags,
    make_split_bags,
    split_by_group,
)


def _toy(n_lesions: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of lesions with 1-3 images each; ~15% of lesions melanoma."""
    rng = np.random.default_rng(seed)
    labels: list[str] = []
    groups: list[str] = []
    for i in range(n_lesions):
        dx = "mel" if rng.random() < 0.15 else str(rng.choice(["nv", "bkl", "bcc"]))
        for _ in range(int(rng.integers(1, 4))):
            labels.append(dx)
            groups.append(f"L{i}")
    return np.array(labels), np.array(groups)


def _check_bag(
    bag: BagSpec, labels: np.ndarray, size: tuple[int, int], rate: tuple[float, float]
) -> None:
    assert size[0] <= len(bag.indices) <= size[1]
    assert len(np.unique(bag.indices)) == len(bag.indices)  # distinct images inside a bag
    truth = (labels[bag.indices] == "mel").astype(np.int64)
    np.testing.assert_array_equal(bag.instance_labels, truth)
    assert bag.label == int(truth.any())
    if bag.label == 1:
        assert truth.sum() >= 1
        assert rate[0] - 1e-12 <= truth.mean() <= rate[1] + 1e-12
    else:
        assert truth.sum() == 0


def test_bag_invariants_and_balance() -> None:
    labels, groups = _toy()
    bags = make_mil_bags(
        labels, groups, n_bags=40, bag_size=(10, 30), witness_rate=(0.1, 0.3), seed=3
    )
    assert len(bags) == 40
    assert sum(b.label for b in bags) == 20
    for b in bags:
        _check_bag(b, labels, (10, 30), (0.1, 0.3))
    assert [b.bag_id for b in bags] == [f"bag_{k}" for k in range(40)]


def test_witness_rate_hand_case() -> None:
    # 3 melanomas, 20 others; bag size 10, rate exactly 0.2 -> exactly 2 witnesses
    labels = np.array(["mel"] * 3 + ["nv"] * 20)
    bags = make_mil_bags(
        labels, n_bags=6, bag_size=(10, 10), witness_rate=(0.2, 0.2), positive_fraction=1.0
    )
    assert all(b.label == 1 and b.instance_labels.sum() == 2 for b in bags)
    # a rate below 1/size still gives at least one witness when 1/size fits the upper bound
    one = make_mil_bags(
        labels, n_bags=2, bag_size=(10, 10), witness_rate=(0.0, 0.1), positive_fraction=1.0
    )
    assert all(b.instance_labels.sum() == 1 for b in one)


def test_sizes_that_cannot_hold_the_rate_are_skipped() -> None:
    # rate in [0.3, 0.35]: size 3 -> 1 (0.333) ok; sizes 4, 5 hold no integer witness count
    labels = np.array(["mel"] * 5 + ["nv"] * 20)
    bags = make_mil_bags(
        labels, n_bags=20, bag_size=(3, 5), witness_rate=(0.3, 0.35), positive_fraction=1.0
    )
    assert {len(b.indices) for b in bags} == {3}


def test_deterministic_per_seed() -> None:
    labels, groups = _toy()
    a = make_mil_bags(labels, groups, n_bags=10, bag_size=(5, 15), seed=1)
    b = make_mil_bags(labels, groups, n_bags=10, bag_size=(5, 15), seed=1)
    c = make_mil_bags(labels, groups, n_bags=10, bag_size=(5, 15), seed=2)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.indices, y.indices) for x, y in zip(a, c, strict=True))


def test_no_lesion_across_splits() -> None:
    labels, groups = _toy(200)
    split = split_by_group(labels, groups, seed=0)
    seen = [set(groups[split[s]]) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    for s in ("train", "val", "test"):  # stratified: every split has melanoma lesions
        assert (labels[split[s]] == "mel").any()
    bags = make_split_bags(
        labels,
        groups,
        n_bags={"train": 30, "val": 10, "test": 10},
        bag_size=(5, 12),
        witness_rate=(0.1, 0.4),
        seed=0,
    )
    lesions = {name: bag_groups(b, groups) for name, b in bags.items()}
    assert not (lesions["train"] & lesions["val"]) and not (lesions["train"] & lesions["test"])
    assert not (lesions["val"] & lesions["test"])
    for name, b in bags.items():
        pool = set(split[name].tolist())
        assert all(set(x.indices.tolist()) <= pool for x in b)
        assert all(x.bag_id.startswith(f"{name}_") for x in b)
        for x in b:
            _check_bag(x, labels, (5, 12), (0.1, 0.4))


def test_errors() -> None:
    labels = np.array(["mel"] * 2 + ["nv"] * 5)
    with pytest.raises(ValueError, match="no negative bag possible: 5 non-'mel' images"):
        make_mil_bags(labels, n_bags=2, bag_size=(6, 8))
    with pytest.raises(ValueError, match="witness_rate must satisfy"):
        make_mil_bags(labels, n_bags=2, bag_size=(2, 3), witness_rate=(0.5, 0.2))
    with pytest.raises(ValueError, match="no positive bag possible"):
        make_mil_bags(np.array(["nv"] * 30), n_bags=2, bag_size=(5, 10))
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['dev'\]"):
        make_split_bags(labels, np.arange(7).astype(str), n_bags={"dev": 1})


def test_bags_from_specs_features() -> None:
    pytest.importorskip("medcl.mil.data")
    labels = np.array(["mel"] * 3 + ["nv"] * 20)
    feats = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    specs = make_mil_bags(labels, n_bags=2, bag_size=(5, 5), witness_rate=(0.2, 0.2), seed=0)
    from medcl.mil.ham_bags import bags_from_specs

    bags = bags_from_specs(specs, feats)
    for spec, bag in zip(specs, bags, strict=True):
        np.testing.assert_array_equal(bag.features.numpy(), feats[spec.indices])
        assert bag.label == spec.label and bag.bag_id == spec.bag_id == bag.patient
        assert bag.instance_labels is not None
        np.testing.assert_array_equal(bag.instance_labels.numpy(), spec.instance_labels)


@pytest.mark.realdata
def test_ham10000_bags(data_root: Path) -> None:
    from medcl.io.datasets.ham10000 import load_ham10000

    ds = load_ham10000(data_root / "ham10000", check_files=False)
    labels = ds.df["label"].to_numpy()
    groups = ds.df["group"].to_numpy()
    bags = make_split_bags(labels, groups, n_bags={"train": 200, "val": 50, "test": 100}, seed=0)
    lesions = {name: bag_groups(b, groups) for name, b in bags.items()}
    assert not (lesions["train"] & lesions["test"]) and not (lesions["val"] & lesions["test"])
    assert not (lesions["train"] & lesions["val"])
    for b in bags.values():
        assert sum(x.label for x in b) == len(b) // 2
        for x in b:
            _check_bag(x, labels, (20, 100), (0.05, 0.20))
