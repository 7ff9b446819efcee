"""Every registered loss is built from a job config, through the path the jobs use."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from medcl.losses.dense import DenseLocalLoss
from medcl.losses.local import LocalContrastiveLoss
from medcl.losses.ntxent import NTXentLoss
from medcl.losses.partition import GLOBAL_LOSSES, create_global_loss
from medcl.losses.registry import LOCAL_LOSSES, LOSSES, list_local_losses
from medcl.losses.supcon import SupConLoss
from medcl.pretrain.patch import PatchPretrainConfig, build_patch_loss, embedding_losses
from medcl.pretrain.volume import GlobalStageConfig, LocalStageConfig, build_local_loss


def test_every_registered_loss_is_reachable_from_a_config() -> None:
    reached: set[str] = set()
    for name in embedding_losses():
        loss = build_patch_loss(PatchPretrainConfig(loss=name, temperature=0.3))
        assert loss.temperature == pytest.approx(0.3)  # type: ignore[union-attr]
        reached.add(name)
    for name in list_local_losses():
        local = build_local_loss(LocalStageConfig(loss=name, region_size=2, num_regions=3))
        assert (local.region_size, local.num_regions) == (2, 3)  # type: ignore[union-attr]
        reached.add(name)
    assert reached == set(LOSSES) | set(LOCAL_LOSSES)
    for name in GLOBAL_LOSSES:  # the volume job: create_global_loss(gs.loss, ...)
        gs = GlobalStageConfig(loss=name, temperature=0.2)  # type: ignore[arg-type]
        assert create_global_loss(gs.loss, temperature=gs.temperature).temperature == 0.2


def test_patch_losses_match_the_classes_the_job_built_before() -> None:
    z1, z2 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).chunk(2)
    ntx = build_patch_loss(PatchPretrainConfig())
    assert isinstance(ntx, NTXentLoss) and ntx.temperature == 0.2
    assert ntx(z1, z2) == NTXentLoss(0.2)(z1, z2)
    sup = build_patch_loss(PatchPretrainConfig(loss="supcon", loss_kwargs={"base_temperature": 1}))
    assert isinstance(sup, SupConLoss) and sup.base_temperature == 1.0
    labels = torch.tensor([0, 1, 0])
    stacked = torch.stack([z1, z2], dim=1)
    assert sup(stacked, labels) == SupConLoss(0.2, base_temperature=1.0)(stacked, labels)


def test_local_stage_default_is_the_papers_local_loss_with_the_same_values() -> None:
    f1, f2 = torch.randn(2, 3, 4, 9, 9, generator=torch.Generator().manual_seed(1))
    built = build_local_loss(LocalStageConfig(region_size=3, num_regions=3))
    assert type(built) is LocalContrastiveLoss and not built.domain
    expected = LocalContrastiveLoss(region_size=3, num_regions=3, temperature=0.1, chunk_size=8)
    assert built(f1, f2) == expected(f1, f2)
    domain = build_local_loss(LocalStageConfig(domain=True))
    assert isinstance(domain, LocalContrastiveLoss) and domain.domain
    dense = build_local_loss(LocalStageConfig(loss="dense", region_size=3, num_regions=3))
    assert type(dense) is DenseLocalLoss and dense(f1, f2) == expected(f1, f2)


def test_unknown_or_unusable_loss_names_are_clear_errors() -> None:
    with pytest.raises(ValidationError, match="unknown loss 'simclr'; valid names: dense, ntxent"):
        PatchPretrainConfig(loss="simclr")
    with pytest.raises(ValidationError, match=r"loss 'dense' takes feature maps.*ntxent, supcon"):
        PatchPretrainConfig(loss="dense")
    with pytest.raises(
        ValidationError, match="unknown local loss 'dense2'; valid names: dense, loc"
    ):
        LocalStageConfig(loss="dense2")
    with pytest.raises(ValidationError, match=r"bad options for local loss 'dense'.*domain"):
        LocalStageConfig(loss="dense", domain=True)
    with pytest.raises(ValueError, match=r"bad options for loss 'ntxent'.*accepts: temperature"):
        build_patch_loss(PatchPretrainConfig(loss_kwargs={"base_temperature": 1.0}))
