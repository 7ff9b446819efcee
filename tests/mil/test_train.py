"""fit_mil on a synthetic MIL task, metrics, checkpoints, early stopping and patient folds."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import InvalidInputError
from medcl.mil.aggregators import create_aggregator
from medcl.mil.data import Bag
from medcl.mil.predict import BagPredictions
from medcl.mil.train import (
    MILTrainConfig,
    class_weights,
    cross_validate,
    fit_mil,
    load_mil_model,
    mil_metrics,
    patient_folds,
    predict_bags,
    save_mil_model,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_bags(n: int, seed: int, dim: int = 8, shift: float = 3.0) -> list[Bag]:
    """Gaussian instances; a positive bag (odd index) holds 1-2 instances with a shifted mean."""
    g = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        size = int(g.integers(8, 16))
        label = i % 2
        x = g.normal(size=(size, dim)).astype(np.float32)
        inst = np.zeros(size, dtype=np.int64)
        if label:
            k = int(g.integers(1, 3))
            x[:k, :2] += shift
            inst[:k] = 1
        perm = g.permutation(size)
        bags.append(
            Bag(
                torch.from_numpy(x[perm]),
                label,
                f"s{seed}_{i}",
                patient=f"p{seed}_{i // 2}",
                instance_labels=torch.from_numpy(inst[perm]),
            )
        )
    return bags


def _cfg(aggregator: str, **kw: object) -> MILTrainConfig:
    base: dict[str, object] = {
        "aggregator": aggregator,
        "epochs": 10,
        "lr": 5e-3,
        "patience": 4,
        "device": "cpu",
        "aggregator_kwargs": {"hidden_dim": 16, "dropout": 0.0},
        "progress": False,
    }
    return MILTrainConfig.model_validate({**base, **kw})


@pytest.mark.parametrize("aggregator", ["abmil", "ins"])
def test_synthetic_task_is_learned(aggregator: str) -> None:
    train, val, test = synthetic_bags(40, 0), synthetic_bags(12, 1), synthetic_bags(40, 2)
    ins = {"epochs": 20, "batch_size": 32, "warmup_epochs": 3}
    fit = fit_mil(train, val, _cfg(aggregator, ins=ins))
    metrics = mil_metrics(test, predict_bags(fit.model, test))
    assert metrics["auc"] > 0.9, metrics
    assert 0 <= fit.best_epoch < len(fit.history) <= 20
    if aggregator == "ins":
        assert metrics["instance_auc"] > 0.9, metrics
        assert fit.best_epoch == 19  # a fixed schedule: the last epoch is kept
        assert {"ins_loss", "contrast_loss", "bag_loss", "val_auc"} <= set(fit.history[0])
        assert "bag_loss" not in fit.history[3]  # the bag loss is for the warm-up only
    else:
        assert {"epoch", "train_loss", "val_loss", "val_auc", "seconds"} <= set(fit.history[0])


def test_class_weights_by_hand() -> None:
    assert class_weights([0, 0, 0, 1], 2).tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights([0, 0], 3).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_early_stopping_keeps_the_best_epoch() -> None:
    train, val = synthetic_bags(6, 0), synthetic_bags(4, 1)
    # a learning rate this small never changes the validation loss: no epoch beats epoch 0
    fit = fit_mil(train, val, _cfg("abmil", lr=1e-12, patience=2, epochs=10))
    assert len(fit.history) == 3 and fit.best_epoch == 0
    no_val = fit_mil(train, None, _cfg("mean", epochs=2))
    assert len(no_val.history) == 2 and no_val.best_epoch == 1
    with pytest.raises(ValueError, match=r"bag labels \[3\] are outside 0..1"):
        fit_mil([Bag(torch.zeros(2, 8), 3, "x")], None, _cfg("mean", class_names=["a", "b"]))


def test_mil_metrics_by_hand() -> None:
    bags = [
        Bag(torch.zeros(2, 1), 0, "a", instance_labels=torch.tensor([0, 0])),
        Bag(torch.zeros(2, 1), 1, "b", instance_labels=torch.tensor([1, -1])),
        Bag(torch.zeros(1, 1), 1, "c"),
    ]
    preds = BagPredictions(
        ["a", "b", "c"],
        np.array([0.2, 0.9, 0.1]),
        np.array([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1]]),
        [np.array([0.1, 0.5]), np.array([0.4, 0.0]), np.array([0.3])],
        None,
    )
    m = mil_metrics(bags, preds)
    assert m["auc"] == pytest.approx(0.5)  # positives 0.9, 0.1 vs negative 0.2
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["instance_auc"] == pytest.approx(0.5)  # 0.4 vs 0.1, 0.5
    no_inst = [Bag(b.features, b.label, b.bag_id) for b in bags]
    assert math.isnan(mil_metrics(no_inst, preds)["instance_auc"])
    with pytest.raises(ValueError, match="bag ids differ"):
        mil_metrics(bags[:2], preds)


def test_abmil_predictions_give_attention_as_instance_scores() -> None:
    torch.manual_seed(0)
    model = create_aggregator("abmil", 8, dropout=0.0)
    bags = synthetic_bags(3, 0)
    preds = predict_bags(model, bags, batch_size=2)
    assert preds.attention is not None
    for bag, scores, attn in zip(bags, preds.instance_scores, preds.attention, strict=True):
        assert scores.shape == (len(bag),) and np.allclose(scores, attn)
        assert scores.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(preds.bag_probs.sum(axis=1), 1.0)
    assert np.allclose(preds.bag_scores, preds.bag_probs[:, 1])


@pytest.mark.parametrize("name", ["abmil", "ins", "max", "mean", "transmil"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = create_aggregator(name, 8, 3, hidden_dim=16).eval()
    bags = synthetic_bags(3, 0)
    path = save_mil_model(tmp_path / "m" / "model.pt", model, _cfg(name), ["a", "b", "c"])
    loaded, meta = load_mil_model(path)
    assert meta["aggregator"] == name and meta["class_names"] == ["a", "b", "c"]
    assert meta["in_dim"] == 8 and meta["n_classes"] == 3
    assert meta["aggregator_kwargs"] == {"hidden_dim": 16}
    before, after = predict_bags(model, bags), predict_bags(loaded, bags)
    assert np.array_equal(before.bag_probs, after.bag_probs)
    for x, y in zip(before.instance_scores, after.instance_scores, strict=True):
        assert np.array_equal(x, y)


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="MIL model file not found"):
        load_mil_model(tmp_path / "none.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InvalidInputError, match="not a medcl MIL model"):
        load_mil_model(tmp_path / "other.pt")
    model = create_aggregator("mean", 4)
    with pytest.raises(ValueError, match="3 class names for a model with 2 classes"):
        save_mil_model(tmp_path / "x.pt", model, None, ["a", "b", "c"])


def test_patient_folds_never_split_a_patient() -> None:
    bags = synthetic_bags(24, 0)  # 12 patients of two bags (one of each class)
    bags += [Bag(torch.zeros(1, 8), 0, f"solo{i}", patient=f"solo{i}") for i in range(6)]
    folds = patient_folds(bags, 3, seed=1)
    tested: list[int] = []
    for train_idx, test_idx in folds:
        train_p = {bags[i].patient for i in train_idx}
        test_p = {bags[i].patient for i in test_idx}
        assert not train_p & test_p
        assert len(train_idx) + len(test_idx) == len(bags)
        tested += test_idx.tolist()
    assert sorted(tested) == list(range(len(bags)))
    with pytest.raises(ValueError, match="k must be between 2 and the number of groups"):
        patient_folds(bags[:4], 3)


def test_cross_validate_returns_folds_and_summary() -> None:
    bags = synthetic_bags(16, 0)
    cv = cross_validate(bags, _cfg("mean", epochs=2), n_folds=2, seed=0)
    assert [r.fold for r in cv.folds] == [0, 1]
    tested = sorted(i for r in cv.folds for i in r.test_ids)
    assert tested == sorted(b.bag_id for b in bags)
    for r in cv.folds:
        assert not set(r.train_ids) & set(r.test_ids) and not set(r.val_ids) & set(r.test_ids)
        assert r.predictions.bag_ids == r.test_ids
    aucs = [r.metrics["auc"] for r in cv.folds]
    assert cv.mean["auc"] == pytest.approx(np.mean(aucs))
    assert cv.std["auc"] == pytest.approx(np.std(aucs))
