"""Checkpoints: round trip, atomic writes, clear errors, sha256, pruning and the latest file."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medcl.engine import (
    checkpoint_name,
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from medcl.errors import InvalidInputError


class Net(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def trained(seed: int = 0) -> tuple[Net, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    net, opt, sched = trained()
    path = tmp_path / checkpoint_name(7)
    saved = save_checkpoint(
        path, model=net, optimizer=opt, scheduler=sched, step=7, epoch=2,
        config={"lr": 0.01, "name": "run"}, extra={"note": "hi"},
    )  # fmt: skip
    expected_draws = draws()  # what the generators give right after the save

    fresh, fresh_opt, fresh_sched = trained(seed=1)
    torch.manual_seed(99)
    payload = load_checkpoint(
        path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, restore_rng=True
    )
    assert draws() == expected_draws
    for (k, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    for group_a, group_b in zip(opt.param_groups, fresh_opt.param_groups, strict=True):
        assert group_a["lr"] == group_b["lr"]
    for state_a, state_b in zip(
        opt.state_dict()["state"].values(), fresh_opt.state_dict()["state"].values(), strict=True
    ):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
        assert torch.equal(state_a["step"], state_b["step"])
    assert fresh_sched.state_dict() == sched.state_dict()
    assert payload["step"] == 7 and payload["epoch"] == 2
    assert payload["config"] == {"lr": 0.01, "name": "run"} and payload["extra"] == {"note": "hi"}
    assert payload["arch"] == "Net"
    # the sha256 of the file's bytes, also in the sidecar
    assert saved.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert (tmp_path / (path.name + ".sha256")).read_text().split() == [saved.sha256, path.name]


def test_wrapped_model_is_saved_without_module_prefix(tmp_path: Path) -> None:
    net = Net()
    save_checkpoint(tmp_path / "w.pt", model=nn.DataParallel(net), step=1)
    keys = list(torch.load(tmp_path / "w.pt", weights_only=True)["model"])
    assert keys == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    # a checkpoint written by someone else with a `module.` prefix still loads
    prefixed = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"model": prefixed}, tmp_path / "p.pt")
    other = Net()
    load_checkpoint(tmp_path / "p.pt", model=nn.DataParallel(other))
    assert torch.equal(other.fc1.weight, net.fc1.weight)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / checkpoint_name(1)
    first = save_checkpoint(path, model=Net(), step=1)
    before = path.read_bytes()
    real_save = torch.save

    def crash_midway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # a partial file, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=Net(hidden=8), step=1)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]
    assert load_checkpoint(path, model=Net())["step"] == 1
    assert file_sha256(path) == first.sha256


def test_corrupt_or_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=Net(), step=3)
    data = path.read_bytes()
    # bytes changed behind the sidecar's back
    path.write_bytes(data[:-10] + b"x" * 10)
    with pytest.raises(InvalidInputError, match=r"c\.pt: sha256 .* does not match c\.pt\.sha256"):
        load_checkpoint(path, model=Net())
    # truncated, no sidecar: torch cannot read it
    (tmp_path / "c.pt.sha256").unlink()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=r"c\.pt: not a readable checkpoint") as info:
        load_checkpoint(path, model=Net())
    assert "\n" not in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"c\.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(InvalidInputError, match="not a medcl checkpoint"):
        load_checkpoint(path)
    with pytest.raises(InvalidInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_key_mismatch_lists_keys_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "k.pt"
    save_checkpoint(path, model=Net(hidden=4), step=1)

    class Other(Net):
        def __init__(self) -> None:
            super().__init__(hidden=5)
            self.head = nn.Linear(2, 1)
            del self.fc2

    other = Other()
    before = other.fc1.weight.detach().clone()
    with pytest.raises(InvalidInputError) as info:
        load_checkpoint(path, model=other)
    message = str(info.value)
    assert message.startswith(f"{path}: checkpoint does not match the model")
    assert "missing keys [head.bias, head.weight] (2)" in message
    assert "unexpected keys [fc2.bias, fc2.weight] (2)" in message
    assert "fc1.weight (4, 3) vs (5, 3)" in message and "fc1.bias (4,) vs (5,)" in message
    assert torch.equal(other.fc1.weight, before)  # nothing loaded
    # non-strict: loads what fits
    same = Net(hidden=4)
    source = Net(hidden=4)
    save_checkpoint(path, model=source, step=1)
    extra_head = nn.Sequential()
    extra_head.add_module("fc1", same.fc1)
    extra_head.add_module("bonus", nn.Linear(1, 1))
    load_checkpoint(path, model=extra_head, strict=False)
    assert torch.equal(same.fc1.weight, source.fc1.weight)


def test_latest_ignores_tmp_files_and_sorts_by_step(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "nowhere") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("ckpt_step99.pt", "ckpt_step00000100.pt", "ckpt_step00000007.pt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".ckpt_step00000500.pt.123.tmp").write_bytes(b"x")
    (tmp_path / "ckpt_step00000900.pt.sha256").write_text("x")
    (tmp_path / "notes_step1000.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_step00000100.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [7, 99, 100]


def test_keep_last_prunes_oldest_with_sidecars(tmp_path: Path) -> None:
    net = Net()
    for step in range(1, 6):
        save_checkpoint(tmp_path / checkpoint_name(step), model=net, step=step)
    (tmp_path / ".ckpt_step00000006.pt.42.tmp").write_bytes(b"stale")
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == [checkpoint_name(s) for s in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        checkpoint_name(4), checkpoint_name(4) + ".sha256",
        checkpoint_name(5), checkpoint_name(5) + ".sha256",
    ]  # fmt: skip
    assert prune_checkpoints(tmp_path, keep_last=0) == []  # 0 keeps all
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=-1)


def test_config_differences_name_what_changes_the_output() -> None:
    from medcl.engine.checkpoint import config_differences

    stored = {"loss": "ntxent", "data": {"path": "a", "num_workers": 2}, "train": {"max_steps": 5}}
    same = {"loss": "ntxent", "data": {"path": "a", "num_workers": 0}, "train": {"max_steps": 9}}
    assert config_differences(stored, same) == []  # workers and length may change
    other = {"loss": "supcon", "data": {"path": "b"}, "train": {"max_steps": 5}, "seed": 1}
    assert config_differences(stored, other) == [
        ("data.path", "a", "b"),
        ("loss", "ntxent", "supcon"),
        ("seed", None, 1),
    ]
    assert config_differences({"size": (32, 32)}, {"size": [32, 32]}) == []  # as JSON


def test_load_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=model, step=1, config={"loss": "ntxent", "lr": 0.1})
    with pytest.raises(InvalidInputError) as err:
        load_checkpoint(path, model=model, expected_config={"loss": "supcon", "lr": 0.1})
    assert str(err.value).startswith(
        f"{path}: was trained with other settings (loss: 'ntxent' stored, 'supcon' now)"
    )
    assert load_checkpoint(path, model=model, expected_config={"loss": "ntxent", "lr": 0.1})
