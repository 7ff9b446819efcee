"""Fine-tuning stops on data: best validation Dice kept, patience, the loss-plateau rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.models.unet import UNet, UNetConfig
from medcl.pretrain.finetune import EarlyStopping, EarlyStoppingConfig
from medcl.pretrain.slices import PreparedVolume


def _model() -> UNet:
    torch.manual_seed(0)
    return UNet(
        UNetConfig(channels=(4, 8), out_channels=2, global_hidden_dim=8, local_hidden_dim=8)
    )


def _volume() -> PreparedVolume:
    image = np.zeros((2, 8, 8), np.float32)
    label = np.zeros((2, 8, 8), np.int64)
    label[:, 2:6, 2:6] = 1
    image[label == 1] = 1.0
    return PreparedVolume("v", image, label, "mr", np.eye(4), (8, 8, 2), "v.nii.gz")


def test_plateau_rule_stops_after_patience_flat_checks(tmp_path: Path) -> None:
    cfg = EarlyStoppingConfig(every=10, patience=2, loss_ema=0.0)
    stop = EarlyStopping(cfg, _model(), [], 2, tmp_path, write=True)
    assert stop.mode == "training-loss plateau"
    decisions = [stop(step, loss) for step, loss in ((10, 1.0), (15, 0.1), (20, 0.5), (30, 0.6))]
    # step 15 is not a check; 20 improves on 10; 30 is the first flat check, 40 the second
    assert decisions == [False, False, False, False]
    assert stop(40, 0.7) is True
    assert stop.best_step == 20
    rows = (tmp_path / "validation.csv").read_text().splitlines()
    assert rows[0] == "step,score,train_loss" and len(rows) == 5


def test_validation_keeps_the_best_weights_and_resumes_its_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medcl.pretrain.finetune as finetune

    scores = iter([0.2, 0.5, 0.4, 0.45, 0.3])
    monkeypatch.setattr(finetune, "validation_dice", lambda *a, **k: next(scores))
    model = _model()
    cfg = EarlyStoppingConfig(every=1, patience=3)
    stop = EarlyStopping(cfg, model, [_volume()], 2, tmp_path, write=True)
    assert stop.mode == "validation Dice"
    snapshots = {}
    decisions = []
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)  # training moves the weights
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}
        decisions.append(stop(step, 1.0))
    assert decisions == [False, False, False, False, True]  # 3 checks without beating 0.5
    assert stop.best_step == 2 and stop.best == 0.5
    stop.restore_best()
    for key, value in snapshots[2].items():
        torch.testing.assert_close(model.state_dict()[key], value)
    again = EarlyStopping(cfg, _model(), [_volume()], 2, tmp_path, write=False)
    assert [h[0] for h in again.history] == [1, 2, 3, 4, 5]
    assert again.best_step == 2 and again.bad == 3
    assert again.best_state is not None
    torch.testing.assert_close(
        again.best_state["seg_head.conv.weight"], snapshots[2]["seg_head.conv.weight"]
    )


def test_min_steps_holds_off_the_stop_but_keeps_counting(tmp_path: Path) -> None:
    cfg = EarlyStoppingConfig(every=10, patience=2, loss_ema=0.0, min_steps=60)
    stop = EarlyStopping(cfg, _model(), [], 2, tmp_path, write=True)
    losses = {10: 1.0, 20: 1.1, 30: 1.2, 40: 1.3, 50: 1.4, 60: 1.5}
    decisions = {step: stop(step, loss) for step, loss in losses.items()}
    # flat since step 10: patience is exhausted at 30, but no stop before step 60
    assert [decisions[s] for s in (10, 20, 30, 40, 50)] == [False] * 5
    assert decisions[60] is True
    assert stop.best_step == 10 and stop.bad == 5
