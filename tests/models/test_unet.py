"""UNet with contrastive taps: shapes, wiring vs a plain reference, heads, freezing, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from medcl.errors import MedclError
from medcl.models.heads import LocalProjectionHead, ProjectionHead
from medcl.models.unet import (
    CheckpointMismatchError,
    UNetConfig,
    create_unet,
    list_unets,
)

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "channels": (4, 8, 16, 32),
    "global_hidden_dim": 16,
    "global_dim": 8,
    "local_hidden_dim": 8,
    "local_dim": 6,
    "out_channels": 3,
}


def _tiny(spatial_dims: int = 2, **kw: Any) -> Any:
    """A tiny UNet, typed Any so the tests can index its submodules."""
    torch.manual_seed(0)
    return create_unet(f"unet{spatial_dims}d", **{**TINY, **kw})


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shapes(spatial_dims: int) -> None:
    model = _tiny(spatial_dims)
    size = (16, 16) if spatial_dims == 2 else (16, 8, 8)
    x = torch.randn(2, 1, *size)
    feats = model.encode(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, *(s // 2**i for s in size)) for i, c in enumerate(TINY["channels"])
    ]
    assert model(x).shape == (2, 3, *size)
    assert model.forward_global(x).shape == (2, 8)
    for depth in (1, 2, 3):
        expected = (2, 6, *(s // 2 ** (3 - depth) for s in size))
        assert model.forward_local(x, depth).shape == expected
    with pytest.raises(ValueError, match=r"decoder_depth must be in 1\.\.3"):
        model.forward_local(x, 4)


def test_input_size_must_be_multiple() -> None:
    model = _tiny(2)
    with pytest.raises(ValueError, match=r"must be a multiple of 8"):
        model(torch.randn(1, 1, 20, 16))
    with pytest.raises(ValueError, match=r"expected input \(B, 1, 2 spatial dims\)"):
        model(torch.randn(1, 2, 16, 16))


def test_forward_matches_plain_composition() -> None:
    """Skips are wired level-to-level and pooling is global mean: a hand-written forward agrees."""
    model = _tiny(2, norm="instance").double().eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f0 = model.encoder.levels[0](x)
        f1 = model.encoder.levels[1][1](F.max_pool2d(f0, 2))
        f2 = model.encoder.levels[2][1](F.max_pool2d(f1, 2))
        f3 = model.encoder.levels[3][1](F.max_pool2d(f2, 2))
        b = model.decoder.blocks
        d1 = b[0].conv(torch.cat([b[0].up(f3), f2], 1))
        d2 = b[1].conv(torch.cat([b[1].up(d1), f1], 1))
        d3 = b[2].conv(torch.cat([b[2].up(d2), f0], 1))
        seg = F.conv2d(d3, model.seg_head.conv.weight, model.seg_head.conv.bias)
        lin1, lin2 = model.global_head.layers[0], model.global_head.layers[2]
        pooled = f3.sum(dim=(2, 3)) / (f3.shape[2] * f3.shape[3])
        g = F.linear(F.relu(F.linear(pooled, lin1.weight, lin1.bias)), lin2.weight, lin2.bias)
        h = model.local_heads["2"].layers
        loc = F.conv2d(F.relu(F.conv2d(d2, h[0].weight, h[0].bias)), h[2].weight, h[2].bias)
        return seg, g, loc

    ours = (model(x), model.forward_global(x), model.forward_local(x, 2))
    ref = reference(x)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(ours, ref, strict=True):
        w = torch.randn_like(a)
        (ga,) = torch.autograd.grad((a * w).sum(), x, retain_graph=True)
        (gb,) = torch.autograd.grad((b * w).sum(), x, retain_graph=True)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


def test_projection_head_hand_computed() -> None:
    head: Any = ProjectionHead(2, 2, 1).double()
    with torch.no_grad():
        head.layers[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
        head.layers[0].bias.copy_(torch.tensor([0.0, -1.0]))
        head.layers[2].weight.copy_(torch.tensor([[3.0, -2.0]]))
        head.layers[2].bias.copy_(torch.tensor([0.5]))
    x = torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    # row 1: hidden = relu([1-2, 2+1-1]) = [0, 2] -> 3*0 - 2*2 + 0.5 = -3.5
    # row 2: hidden = relu([2, 4-1]) = [2, 3] -> 6 - 6 + 0.5 = 0.5
    torch.testing.assert_close(head(x), torch.tensor([[-3.5], [0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden_dim must be >= 1"):
        ProjectionHead(4, 0, 2)


def test_local_head_is_pointwise_mlp() -> None:
    torch.manual_seed(1)
    head: Any = LocalProjectionHead(3, 4, 5, 3).double()
    x = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    c1, c2 = head.layers[0], head.layers[2]
    w1, w2 = c1.weight.reshape(5, 4), c2.weight.reshape(3, 5)
    ref = torch.empty(2, 3, 3, 2, 2, dtype=torch.float64)
    for n in range(2):
        for i in range(3):
            for j in range(2):
                for k in range(2):
                    hid = torch.relu(w1 @ x[n, :, i, j, k] + c1.bias)
                    ref[n, :, i, j, k] = w2 @ hid + c2.bias
    out = head(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    (g_out,) = torch.autograd.grad((out * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-5)


def test_parameter_groups_and_freezing() -> None:
    model = _tiny(2)
    enc = {id(p) for p in model.encoder_parameters()}
    assert enc == {id(p) for p in model.encoder.parameters()}
    for depth in (1, 2, 3):
        ids = {id(p) for p in model.decoder_parameters(depth)}
        assert ids == {id(p) for b in model.decoder.blocks[:depth] for p in b.parameters()}
    assert {id(p) for p in model.decoder_parameters()} == {
        id(p) for p in model.decoder.parameters()
    }
    model.freeze_encoder(True)
    model.train()
    assert not model.encoder.training and model.decoder.training
    stats = model.encoder.levels[0][0].adn.N.running_mean.clone()
    model.forward_local(torch.randn(2, 1, 16, 16), 2).sum().backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.decoder_parameters(2))
    assert all(p.grad is None for p in model.decoder.blocks[2].parameters())
    torch.testing.assert_close(model.encoder.levels[0][0].adn.N.running_mean, stats)
    model.freeze_encoder(False)
    assert model.encoder.training and all(p.requires_grad for p in model.encoder_parameters())


def test_encoder_checkpoint_loads_into_segmentation_model(tmp_path: Path) -> None:
    pre = _tiny(2)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "pretrained.pt"
    torch.save(pre.checkpoint(), path)
    torch.manual_seed(123)
    seg: Any = create_unet("unet2d", **{**TINY, "out_channels": 5})
    seg_head_before = seg.seg_head.conv.weight.clone()
    dec_before = [p.clone() for p in seg.decoder_parameters()]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(seg.encoder_parameters(), pre.encoder_parameters(), strict=True)
    )
    loaded = seg.load_pretrained(torch.load(path), parts=("encoder",), source=str(path))
    assert loaded and all(k.startswith("encoder.") for k in loaded)
    for a, b in zip(
        seg.encoder.state_dict().values(), pre.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(seg.decoder_parameters(), dec_before, strict=True):
        assert torch.equal(a, b)  # decoder not asked for: unchanged
    assert torch.equal(seg.seg_head.conv.weight, seg_head_before)
    # encoder + decoder; a DDP 'module.' prefix is accepted
    ddp_state = {f"module.{k}": v for k, v in pre.state_dict().items()}
    seg.load_pretrained(ddp_state)
    for a, b in zip(seg.decoder_parameters(), pre.decoder_parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_from_other_architecture_is_clear_error() -> None:
    pre = _tiny(2)
    other = create_unet("unet2d", **{**TINY, "channels": (4, 8, 16, 64)})
    with pytest.raises(CheckpointMismatchError) as info:
        other.load_pretrained(pre.checkpoint(), source="enc.pt")
    msg = str(info.value)
    assert isinstance(info.value, MedclError) and "\n" not in msg
    assert msg.startswith("enc.pt: checkpoint from another architecture")
    assert "channels [4, 8, 16, 32] in checkpoint vs [4, 8, 16, 64]" in msg
    assert "parameter shape(s) differ" in msg and "encoder.levels.3" in msg
    # a plain state dict (no arch) from a 3D model: shapes are listed
    three_d = _tiny(3)
    with pytest.raises(CheckpointMismatchError, match=r"shape\(s\) differ .*\(4, 1, 3, 3, 3\)"):
        _tiny(2).load_pretrained(three_d.state_dict())
    # missing keys (an instance-norm checkpoint has no running stats)
    with pytest.raises(CheckpointMismatchError, match=r"norm instance in checkpoint vs batch"):
        _tiny(2).load_pretrained(_tiny(2, norm="instance").checkpoint())
    with pytest.raises(CheckpointMismatchError, match=r"key\(s\) missing"):
        _tiny(2).load_pretrained(_tiny(2, norm="instance").state_dict())
    with pytest.raises(ValueError, match="unknown parts"):
        pre.load_pretrained(pre.checkpoint(), parts=("bogus",))


def test_registry_and_config() -> None:
    assert list_unets() == ["unet2d", "unet3d"]
    assert create_unet(UNetConfig(spatial_dims=3, **TINY)).cfg.spatial_dims == 3
    assert create_unet({"channels": [2, 4]}, in_channels=2).arch == {
        "spatial_dims": 2,
        "channels": [2, 4],
        "in_channels": 2,
        "norm": "batch",
    }
    with pytest.raises(ValueError, match="unknown unet 'unet4d'; valid names: unet2d, unet3d"):
        create_unet("unet4d")
    with pytest.raises(ValueError, match="at least 2 levels"):
        UNetConfig(channels=(8,))
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        UNetConfig.model_validate({"chanels": (2, 4)})


def test_volume_jobs_share_one_default_unet() -> None:
    from medcl.models.unet import default_volume_unet
    from medcl.pretrain.finetune import FinetuneSegConfig
    from medcl.pretrain.volume import VolumePretrainConfig

    default = default_volume_unet()
    assert VolumePretrainConfig().model == default == FinetuneSegConfig().model
    assert default.channels == (16, 32, 64, 128) and default.spatial_dims == 2
    assert (default.global_hidden_dim, default.local_hidden_dim) == (256, 64)
