"""Group-aware splits: property checks over random inputs, and the JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcl.errors import InvalidInputError
from medcl.io.splits import check_no_leak, group_kfold, group_split, load_split, save_split


def _random_data(seed: int, n_groups: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Groups of 1-5 images; each group mostly one of 4 imbalanced classes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_groups)
    group_label = rng.choice(4, n_groups, p=[0.55, 0.25, 0.15, 0.05])
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    labels = np.repeat(group_label, sizes)
    flip = rng.random(len(labels)) < 0.05  # a few groups with mixed labels
    labels[flip] = rng.integers(0, 4, flip.sum())
    order = rng.permutation(len(groups))  # images of a group need not be adjacent
    return groups[order], labels[order]


def _group_sets(split: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, set[str]]:
    return {k: set(groups[v].tolist()) for k, v in split.items()}


@pytest.mark.parametrize("seed", range(6))
def test_group_split_properties(seed: int) -> None:
    groups, labels = _random_data(seed)
    n = len(groups)
    split = group_split(groups, labels, test_size=0.2, val_size=0.1, seed=seed)
    assert set(split) == {"train", "val", "test"}
    # disjoint and covering every index exactly once
    allidx = np.concatenate(list(split.values()))
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))
    # no group in two splits
    sets = _group_sets(split, groups)
    assert not (
        sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"]
    )
    check_no_leak(split, groups)
    # sizes near the targets, class proportions near the whole set's
    for name, target in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert abs(len(split[name]) / n - target) < 0.03, name
        whole = np.bincount(labels, minlength=4) / n
        part = np.bincount(labels[split[name]], minlength=4) / len(split[name])
        assert np.abs(part - whole).max() < 0.05, (name, part, whole)


def test_group_split_deterministic_per_seed_and_varies_with_seed() -> None:
    groups, labels = _random_data(11)
    a = group_split(groups, labels, seed=3)
    b = group_split(groups, labels, seed=3)
    c = group_split(groups, labels, seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["test"], c["test"])


def test_group_split_without_stratify_or_val() -> None:
    groups, labels = _random_data(5)
    split = group_split(groups, None, test_size=0.25, seed=0)
    assert len(split["val"]) == 0
    assert abs(len(split["test"]) / len(groups) - 0.25) < 0.02
    check_no_leak(split, groups)
    unstrat = group_split(groups, labels, test_size=0.25, stratify=False)
    check_no_leak(unstrat, groups)


def test_group_split_bad_sizes() -> None:
    with pytest.raises(ValueError, match="test_size"):
        group_split(["a", "b"], test_size=0.6, val_size=0.5)


@pytest.mark.parametrize("seed", range(3))
def test_group_kfold_properties(seed: int) -> None:
    groups, labels = _random_data(seed, n_groups=200)
    folds = group_kfold(groups, labels, k=5, seed=seed)
    assert len(folds) == 5
    tests = np.concatenate([t for _, t in folds])
    assert np.array_equal(np.sort(tests), np.arange(len(groups)))  # each image tested once
    whole = np.bincount(labels, minlength=4) / len(labels)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)
        assert abs(len(test) / len(groups) - 0.2) < 0.03
        assert np.abs(np.bincount(labels[test], minlength=4) / len(test) - whole).max() < 0.06


def test_group_kfold_spreads_singleton_strata_and_checks_k() -> None:
    folds = group_kfold(["a", "b", "c"], ["x", "y", "z"], k=3)
    assert sorted(t.tolist() for _, t in folds) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="k must be between 2 and the number of groups"):
        group_kfold(["a", "a", "b"], k=3)


def test_check_no_leak_detects_crossing_group() -> None:
    groups = np.array(["p1", "p1", "p2", "p3"])
    check_no_leak({"train": [0, 1], "test": [2, 3]}, groups)
    with pytest.raises(
        ValueError, match=r"1 group\(s\) are in more than one split: p1 \(train, test\)"
    ):
        check_no_leak({"train": [0, 2], "test": [1, 3]}, groups)
    with pytest.raises(ValueError, match="repeats image indices"):
        check_no_leak({"train": [0, 1], "test": [1, 2]}, groups)


def test_save_load_split_round_trip_and_verification(tmp_path: Path) -> None:
    groups, labels = _random_data(2, n_groups=50)
    split = group_split(groups, labels, test_size=0.3, seed=1)
    path = save_split(split, tmp_path / "split.json", groups=groups, meta={"seed": 1})
    doc = json.loads(path.read_text())
    assert doc["meta"] == {"seed": 1} and doc["n_images"] == len(groups)
    assert doc["groups"]["test"] == sorted(set(groups[split["test"]].tolist()))
    back = load_split(path, groups)
    for k in split:
        np.testing.assert_array_equal(back[k], split[k])
    # verifying against other data fails with the file named
    with pytest.raises(InvalidInputError, match=r"split\.json: split was made for \d+ images"):
        load_split(path, groups[:-1])
    shuffled = groups[np.random.default_rng(0).permutation(len(groups))]
    with pytest.raises(InvalidInputError, match=r"split\.json: .*(other groups|more than one)"):
        load_split(path, shuffled)


def test_save_split_refuses_leaky_split_and_load_rejects_junk(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="more than one split"):
        save_split({"train": [0], "test": [1]}, tmp_path / "s.json", groups=["a", "a"])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"junk\.json: not a valid split JSON file"):
        load_split(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(InvalidInputError, match=r"other\.json: not a medcl split file"):
        load_split(tmp_path / "other.json")
