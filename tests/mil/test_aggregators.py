"""MIL aggregators: registry, shapes, mask invariants, empty bags, pooling against references."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from medcl.mil.aggregators import create_aggregator, list_aggregators, masked_softmax
from medcl.mil.data import Bag, collate_bags

NAMES = ["abmil", "ins", "max", "mean", "transmil"]
D = 6


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str, **kw: object) -> Any:
    torch.manual_seed(0)
    return create_aggregator(name, D, 2, hidden_dim=8, dropout=0.0, **kw).eval()


def test_registry_lists_names_and_rejects_unknown() -> None:
    assert list_aggregators() == NAMES
    message = r"^unknown MIL aggregator 'clam'; valid names: abmil, ins, max, mean, transmil$"
    with pytest.raises(ValueError, match=message):
        create_aggregator("clam", D)
    with pytest.raises(ValueError, match="bad options for MIL aggregator 'abmil'"):
        create_aggregator("abmil", D, nonsense=1)


def test_collate_pads_with_mask_and_minus_one() -> None:
    a = Bag(torch.ones(2, 3), 1, "a", instance_labels=torch.tensor([0, 1]))
    b = Bag(torch.full((4, 3), 2.0), 0, "b")
    batch = collate_bags([a, b])
    assert batch.features.shape == (2, 4, 3) and batch.bag_ids == ["a", "b"]
    assert batch.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.features[0, 2:].abs().sum() == 0
    assert batch.instance_labels.tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1]]
    assert batch.labels.tolist() == [1, 0]
    assert a.patient == "a"
    with pytest.raises(ValueError, match="different feature dimensions"):
        collate_bags([a, Bag(torch.ones(2, 5), 0, "c")])


def test_masked_softmax_matches_hand_values_and_empty_rows() -> None:
    scores = torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = masked_softmax(scores, mask)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    out.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_shapes_mask_invariants_and_padding_invariance(name: str) -> None:
    model = _model(name)
    g = torch.Generator().manual_seed(1)
    short = torch.randn(3, D, generator=g)
    long = torch.randn(7, D, generator=g)
    features = torch.zeros(2, 7, D)
    features[0, :3] = short
    features[0, 3:] = 100.0 * torch.randn(4, D, generator=g)  # junk on padding must not matter
    features[1] = long
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :3] = True
    mask[1] = True
    with torch.no_grad():
        out = model(features, mask)
        alone = model(short[None], torch.ones(1, 3, dtype=torch.bool))
    assert out.logits.shape == (2, 2)
    assert torch.allclose(out.logits[0], alone.logits[0], atol=1e-5)
    if name in ("abmil", "transmil"):
        assert out.attention is not None and alone.attention is not None
        assert out.instance_scores is None
        assert torch.allclose(out.attention.sum(dim=1), torch.ones(2), atol=1e-6)
        assert (out.attention[0, 3:] == 0).all()
        assert torch.allclose(out.attention[0, :3], alone.attention[0], atol=1e-5)
    else:
        assert out.instance_scores is not None and alone.instance_scores is not None
        assert out.attention is None
        assert (out.instance_scores[0, 3:] == 0).all()
        assert ((out.instance_scores >= 0) & (out.instance_scores <= 1)).all()
        assert torch.allclose(out.instance_scores[0, :3], alone.instance_scores[0], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_empty_bag_gives_finite_logits_and_no_scores(name: str) -> None:
    model = _model(name)
    features = torch.randn(2, 3, D, requires_grad=True)
    mask = torch.tensor([[False] * 3, [True] * 3])
    out = model(features, mask)
    assert torch.isfinite(out.logits).all()
    scores = out.attention if out.attention is not None else out.instance_scores
    assert scores is not None and (scores[0] == 0).all()
    out.logits.sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    if name not in ("abmil", "transmil"):  # instance models: the classifier's bias
        assert torch.allclose(out.logits[0], model.classifier.bias)
    if name == "abmil":  # z = 0, so the bias too
        assert torch.allclose(out.logits[0], model.classifier.bias)
    # a batch whose bags are all empty (N = 0)
    out0 = model(torch.zeros(1, 0, D), torch.zeros(1, 0, dtype=torch.bool))
    assert out0.logits.shape == (1, 2) and torch.isfinite(out0.logits).all()


def test_abmil_attention_is_softmax_of_gated_scores() -> None:
    model = _model("abmil")
    x = torch.randn(1, 4, D)
    mask = torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        out = model(x, mask)
        h = model.embed(x[0, :3])
        raw = [
            float(model.attention_w(model.attention_v(h[i]) * model.attention_u(h[i])))
            for i in range(3)
        ]
        expected = torch.softmax(torch.tensor(raw), dim=0)
        z = sum(expected[i] * h[i] for i in range(3))
        logits = model.classifier(z)
    assert out.attention is not None
    assert torch.allclose(out.attention[0, :3], expected, atol=1e-6)
    assert torch.allclose(out.logits[0], logits, atol=1e-5)


def test_topk_pooling_averages_the_top_instances_logits() -> None:
    model = _model("ins", top_k=2, pooling="topk")
    x = torch.randn(1, 5, D)
    mask = torch.tensor([[True, True, True, True, False]])
    with torch.no_grad():
        out = model.forward_instances(x, mask)
        inst = model.classifier(model.embed(x[0, :4]))
        p = torch.softmax(inst, dim=-1)[:, 1]
        top = sorted(range(4), key=lambda i: -float(p[i]))[:2]
        expected = (inst[top[0]] + inst[top[1]]) / 2
    assert torch.allclose(out.instance_scores[0, :4], p, atol=1e-6)
    assert torch.allclose(out.logits[0], expected, atol=1e-6)
    assert out.embeddings is not None
    assert torch.allclose(out.embeddings[0, :4].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (out.embeddings[0, 4] == 0).all()


def test_ins_bag_probabilities_are_the_mean_instance_probabilities() -> None:
    model = _model("ins")  # the paper's bag score is the default
    assert model.pooling == "mean_prob"
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        out = model(x, mask)
        for b, n in ((0, 3), (1, 5)):
            probs = torch.softmax(model.classifier(model.embed(x[b, :n])), dim=-1)
            expected = probs.mean(dim=0)
            assert torch.allclose(torch.softmax(out.logits[b], dim=-1), expected, atol=1e-6)
            assert out.instance_scores is not None
            assert torch.allclose(out.instance_scores[b, :n], probs[:, 1], atol=1e-6)
            # the bag score is the mean of the instance probabilities, not their maximum
            assert float(1 - torch.softmax(out.logits[b], -1)[0]) == pytest.approx(
                float(probs[:, 1].mean()), abs=1e-6
            )
    with pytest.raises(ValueError, match="pooling must be one of mean_prob, mean, topk"):
        _model("ins", pooling="max")


def test_mean_pooling_equals_classifier_of_mean_embedding() -> None:
    model = _model("mean")
    x = torch.randn(1, 4, D)
    with torch.no_grad():
        out = model(x, torch.ones(1, 4, dtype=torch.bool))
        expected = model.classifier(model.embed(x[0]).mean(dim=0))
    assert torch.allclose(out.logits[0], expected, atol=1e-6)


def test_bad_inputs_are_refused() -> None:
    model = _model("abmil")
    with pytest.raises(ValueError, match=r"features must be \(B, N, 6\)"):
        model(torch.zeros(1, 3, 5), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        model(torch.zeros(1, 3, D), torch.ones(1, 3))


def test_bad_options_checked_before_building_and_builder_bugs_propagate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medcl.mil import abmil
    from medcl.mil.base import AGGREGATORS

    with pytest.raises(ValueError, match=r"bad options for MIL aggregator 'max'.*top_k"):
        create_aggregator("max", D, topk=3)  # misspelt: the message names the accepted options
    with pytest.raises(ValueError, match=r"bad options for MIL aggregator 'abmil'.*in_dim"):
        AGGREGATORS.create("abmil")  # the required in_dim left out

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("a bug inside the model's constructor")

    # a TypeError raised while building is a bug there, not "bad options": it propagates
    monkeypatch.setattr(abmil, "GatedAttentionAggregator", broken)
    with pytest.raises(TypeError, match="a bug inside the model's constructor"):
        create_aggregator("abmil", D, hidden_dim=8)
