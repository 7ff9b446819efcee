"""The INS training loop: confidences, warm-up, bag loss and the fixed schedule."""

from __future__ import annotations

import pytest
import torch

from medcl.losses.ins import INSContrastiveLoss, confidence_momentum
from medcl.mil.aggregators import create_aggregator
from medcl.mil.data import Bag
from medcl.mil.ins_train import (
    INSOptions,
    INSState,
    fit_ins,
    ins_instance_step,
    instance_table,
    pseudo_label_accuracy,
)
from medcl.mil.instance import InstanceAggregator


def _bags() -> list[Bag]:
    g = torch.Generator().manual_seed(0)
    neg = Bag(torch.randn(4, 6, generator=g), 0, "n", instance_labels=torch.zeros(4).long())
    pos_x = torch.randn(5, 6, generator=g)
    pos_x[:2, 0] += 4.0
    pos = Bag(pos_x, 1, "p", instance_labels=torch.tensor([1, 1, 0, 0, 0]))
    return [neg, pos]


def _model(proj_dim: int = 4) -> InstanceAggregator:
    torch.manual_seed(0)
    model = create_aggregator("ins", 6, 2, hidden_dim=8, dropout=0.0, proj_dim=proj_dim)
    assert isinstance(model, InstanceAggregator)
    return model


def test_instance_table_flattens_bags_with_candidates() -> None:
    table = instance_table(_bags(), 2)
    assert table.features.shape == (9, 6)
    assert table.bag_index.tolist() == [0] * 4 + [1] * 5
    assert table.candidates.tolist() == [[1.0, 0.0]] * 4 + [[1.0, 1.0]] * 5
    assert table.true_labels.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0]


def test_warm_step_keeps_confidence_and_later_steps_move_it_by_phi() -> None:
    model, table = _model(), instance_table(_bags(), 2)
    state = INSState(model, table, INSOptions(queue_size=5), proj_dim=4)
    idx = torch.arange(9)
    before = state.confidence.clone()
    contrast = INSContrastiveLoss(0.07)
    loss, parts = ins_instance_step(
        model, state, table.features, idx, table.candidates, warm=True, phi=0.9,
        contrast=contrast,
    )  # fmt: skip
    assert torch.isfinite(loss) and set(parts) == {"ins_loss", "contrast_loss"}
    assert torch.equal(state.confidence, before)  # no PiCO update in the warm-up
    assert len(state.queue) == 5  # capped at queue_size, newest first
    protos = state.prototypes.clone()
    ins_instance_step(
        model, state, table.features, idx, table.candidates, warm=False, phi=0.9,
        contrast=contrast,
    )  # fmt: skip
    # negative-bag instances stay certain negatives; positive-bag ones moved 10% to a one-hot
    assert state.confidence[:4].tolist() == [[1.0, 0.0]] * 4
    moved = (state.confidence[4:] - 0.9 * before[4:]) / 0.1
    assert torch.allclose(moved.sum(dim=1), torch.ones(5))
    assert set(moved.flatten().round().tolist()) <= {0.0, 1.0}
    # the step used the prototypes from before its own update
    z = torch.nn.functional.normalize(model.projector(model.embed(table.features[4:])), dim=-1)  # type: ignore[misc]
    expected = (torch.softmax(z @ protos.T, dim=-1)).argmax(dim=-1)
    assert moved.argmax(dim=1).tolist() == expected.tolist()


def test_fit_ins_uses_the_bag_loss_in_warmup_only_and_a_fixed_schedule() -> None:
    bags = _bags() * 3
    opts = INSOptions(epochs=4, warmup_epochs=2, batch_size=4)
    history = fit_ins(_model(), bags, bags[:2], opts, n_classes=2, seed=0)
    assert len(history) == 4
    assert ["bag_loss" in row for row in history] == [True, True, False, False]
    assert [row["phi"] for row in history] == pytest.approx(
        [confidence_momentum(e, 4) for e in range(4)]
    )
    assert {"pseudo_label_acc", "classifier_acc", "val_auc", "val_instance_auc"} <= set(history[0])
    no_bag = fit_ins(_model(), bags, None, opts.model_copy(update={"bag_loss_weight": 0.0}),
                     n_classes=2, seed=0)  # fmt: skip
    assert all("bag_loss" not in row for row in no_bag)
    with pytest.raises(ValueError, match="projection head"):
        fit_ins(_model(proj_dim=0), bags, None, opts, n_classes=2, seed=0)


def test_pseudo_label_accuracy_by_hand() -> None:
    table = instance_table(_bags(), 2)
    conf = torch.tensor([[1.0, 0.0]] * 4 + [[0.2, 0.8], [0.9, 0.1], [0.9, 0.1]] + [[0.1, 0.9]] * 2)
    # positive-bag instances: truth 1,1,0,0,0; argmax 1,0,0,1,1 -> 2 of 5 right
    assert pseudo_label_accuracy(conf, table) == pytest.approx(2 / 5)


@pytest.mark.parametrize(("mode", "warm_seen"), [("positive_bags", {4, 5, 6, 7, 8}), ("all", None)])
def test_warmup_instance_epochs_see_positive_bags_only_as_the_reference(
    monkeypatch: pytest.MonkeyPatch, mode: str, warm_seen: set[int] | None
) -> None:
    import medcl.mil.ins_train as ins_train

    seen: dict[bool, set[int]] = {True: set(), False: set()}
    step = ins_train.ins_instance_step

    def recording(*args: object, **kwargs: object) -> object:
        seen[bool(kwargs["warm"])].update(args[3].tolist())  # type: ignore[attr-defined]
        return step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ins_train, "ins_instance_step", recording)
    opts = INSOptions(epochs=2, warmup_epochs=1, batch_size=3, warmup_instances=mode)  # type: ignore[arg-type]
    fit_ins(_model(), _bags(), None, opts, n_classes=2, seed=0)
    assert seen[True] == (warm_seen if warm_seen is not None else set(range(9)))
    assert seen[False] == set(range(9))  # after the warm-up every instance trains
