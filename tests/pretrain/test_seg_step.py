"""The fine-tuning step in channels-last layout computes what the contiguous one computes."""

from __future__ import annotations

import torch

from medcl.models.unet import UNet, UNetConfig
from medcl.pretrain.finetune import FinetuneSegConfig, _SegStep


def _model() -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(4, 8, 16), out_channels=3, global_hidden_dim=8, local_hidden_dim=8)
    return UNet(cfg)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(4, 1, 24, 24, generator=g),
        "label": torch.randint(0, 3, (4, 1, 24, 24), generator=g),
    }


def test_channels_last_step_gives_the_same_loss_and_gradients() -> None:
    batch = _batch()
    plain, fast = _model(), _model()
    fast.to(memory_format=torch.channels_last)
    conv = next(p for p in fast.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()  # really the other layout, not a no-op
    loss_plain, _ = _SegStep()(plain, batch)
    loss_fast, _ = _SegStep(channels_last=True)(fast, batch)
    loss_plain.backward()
    loss_fast.backward()
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-5, atol=1e-6)
    checked = 0
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        if a.grad is None:  # the projection heads of pretraining take no part
            assert b.grad is None, name
            continue
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
        checked += 1
    assert checked > 10


def test_channels_last_is_the_default_and_part_of_the_settings() -> None:
    cfg = FinetuneSegConfig()
    assert cfg.channels_last is True
    # a run folder keyed by its settings tells the two layouts apart (other rounding)
    assert cfg.model_dump() != cfg.model_copy(update={"channels_last": False}).model_dump()
