"""The generic loop: a plain-loop reference, metrics.csv, exact resumption after SIGKILL, loggers,
mixed precision helper and the config."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kill_worker
import pydantic
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from medcl.engine import (
    CSVLogger,
    MixedPrecision,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    resolve_precision,
    supervised_step,
)

WORKER = Path(__file__).with_name("kill_worker.py")
REPO = Path(__file__).resolve().parents[2]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- a plain reference loop -----------------------------------------------------------------------


def test_matches_plain_loop_with_grad_accum_and_clipping(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64))
    w0 = model.weight.detach().clone().view(-1).tolist()
    lr, clip, steps = 0.1, 0.5, 6
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    cfg = TrainConfig(
        max_steps=steps, log_every=1, ckpt_every=0, grad_accum=2, grad_clip=clip,
        precision="fp32", device="cpu", progress=False,
    )  # fmt: skip
    trainer = Trainer(
        model, optimizer, supervised_step(nn.functional.mse_loss), loader, cfg, tmp_path,
        dist_info=kill_worker.cpu_info(),
    )  # fmt: skip
    summary = trainer.fit()

    # Reference: each step sees 8 consecutive samples (two micro-batches of 4, wrapping around
    # the 16 samples), the gradient of their mean squared error, clipped to norm `clip`.
    w = list(w0)
    ref_losses, grad = [], [0.0, 0.0, 0.0]
    for s in range(steps):
        rows = [(8 * s + i) % 16 for i in range(8)]
        residual = {i: sum(x[i, k].item() * w[k] for k in range(3)) - y[i, 0].item() for i in rows}
        ref_losses.append(sum(r * r for r in residual.values()) / 8)
        grad = [sum(2 / 8 * residual[i] * x[i, j].item() for i in rows) for j in range(3)]
        norm = math.sqrt(sum(g * g for g in grad))
        scale = min(1.0, clip / (norm + 1e-6))
        grad = [g * scale for g in grad]
        w = [w[j] - lr * grad[j] for j in range(3)]

    assert summary.step == steps and summary.epoch == 2  # 16 samples = 2 steps per epoch
    got = model.weight.detach().view(-1).tolist()
    assert got == pytest.approx(w, abs=1e-12)
    # the gradient left on the parameter is the last step's clipped gradient
    assert model.weight.grad is not None
    assert model.weight.grad.view(-1).tolist() == pytest.approx(grad, abs=1e-12)
    rows_csv = read_csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows_csv] == list(range(1, steps + 1))
    assert [float(r["loss"]) for r in rows_csv] == pytest.approx(ref_losses, abs=1e-12)
    assert summary.last_loss == pytest.approx(ref_losses[-1], abs=1e-12)
    # clipping must have been active, or this test would not test it
    assert any(float(r["loss"]) > 0 for r in rows_csv) and norm > clip
    # ckpt_every=0 still writes the final checkpoint
    assert [s for s, _ in list_checkpoints(tmp_path)] == [steps]


def test_gradient_of_step_matches_autograd_reference() -> None:
    # The loss the trainer back-propagates for one micro-batch is step_fn's; check autograd on the
    # supervised step against the closed-form MSE gradient 2/N X^T (Xw - y).
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    loss, metrics = supervised_step(nn.functional.mse_loss)(model, (x, y))
    (grad,) = torch.autograd.grad(loss, model.weight)
    w = model.weight.detach()
    expected = (2 / 5 * x.T @ (x @ w.T - y)).T
    assert metrics == {}
    assert torch.allclose(grad, expected, atol=1e-12)


# -- metrics, checkpoints, resumption -------------------------------------------------------------


def test_loss_decreases_and_metrics_csv(tmp_path: Path) -> None:
    _, summary = kill_worker.run(tmp_path, max_steps=30, ckpt_every=10, log_every=5, keep_last=2)
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["step", "epoch", "loss", "lr", "mae", "images_per_s"]
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    # 64 samples in batches of 8: 8 steps per epoch
    assert [int(r["epoch"]) for r in rows] == [(s - 1) // 8 for s in (5, 10, 15, 20, 25, 30)]
    # StepLR(step_size=7, gamma=0.5): the lr used by step s is 0.05 * 0.5 ** ((s - 1) // 7)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([0.05 * 0.5 ** ((s - 1) // 7) for s in (5, 10, 15, 20, 25, 30)])
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.25 * losses[0]
    assert all(float(r["images_per_s"]) > 0 and float(r["mae"]) > 0 for r in rows)
    assert summary.step == 30 and summary.last_loss == pytest.approx(losses[-1])
    # keep_last=2 leaves the two newest checkpoints and their sha256 sidecars
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == [
        "ckpt_step00000020.pt.sha256",
        "ckpt_step00000030.pt.sha256",
    ]


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    model_a, summary_a = kill_worker.run(run_a, max_steps=20)

    marker = tmp_path / "hung"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(WORKER), str(run_b), "--hang-after", "12", "--marker", str(marker)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(
                    f"worker exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                pytest.fail("worker did not reach step 12 within 60 s")
            time.sleep(0.05)
        assert marker.read_text() == "12"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # Killed in step 13: checkpoints up to step 10, log rows up to step 12.
    assert latest_checkpoint(run_b) == run_b / "ckpt_step00000010.pt"
    assert [int(r["step"]) for r in read_csv(run_b / "metrics.csv")] == list(range(1, 13))

    model_b, summary_b = kill_worker.run(run_b, max_steps=20)
    assert summary_b.resumed_from == 10 and summary_b.step == 20
    for (name, pa), (_, pb) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6), name
    assert summary_b.last_loss == pytest.approx(summary_a.last_loss, abs=1e-6)
    # The resumed log has every step once (rows 11-12 of the killed run replaced), one header.
    rows_a, rows_b = read_csv(run_a / "metrics.csv"), read_csv(run_b / "metrics.csv")
    assert [int(r["step"]) for r in rows_b] == list(range(1, 21))
    assert (run_b / "metrics.csv").read_text().count("step,epoch") == 1
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), abs=1e-6)
        assert ra["epoch"] == rb["epoch"] and ra["lr"] == rb["lr"]


def test_finished_run_is_not_retrained_and_resume_off_starts_over(tmp_path: Path) -> None:
    model, first = kill_worker.run(tmp_path, max_steps=6, ckpt_every=3)
    again_model, again = kill_worker.run(tmp_path, max_steps=6, ckpt_every=3)
    assert again.resumed_from == 6 and again.step == 6
    assert again.last_loss == pytest.approx(first.last_loss)
    for pa, pb in zip(model.parameters(), again_model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    _, fresh = kill_worker.run(tmp_path, max_steps=6, ckpt_every=3, resume=False)
    assert fresh.resumed_from is None and fresh.step == 6
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics.csv")] == list(range(1, 7))


class RecordingSampler(Sampler[int]):
    """Yields 0..n-1 rotated by the epoch and records every set_epoch call."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0
        self.calls: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.calls.append(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter([(i + self.epoch) % self.n for i in range(self.n)])

    def __len__(self) -> int:
        return self.n


def _sampler_run(out: Path, max_steps: int) -> tuple[RecordingSampler, list[list[int]]]:
    sampler = RecordingSampler(8)
    loader: DataLoader[Any] = DataLoader(list(range(8)), batch_size=2, sampler=sampler)  # type: ignore[arg-type]
    seen: list[list[int]] = []
    weight = nn.Parameter(torch.zeros(1))

    def step_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        seen.append(batch.tolist())
        return (weight * batch.float().sum()).sum(), {}

    model = nn.Module()
    model.weight = weight
    cfg = TrainConfig(max_steps=max_steps, ckpt_every=5, device="cpu", progress=False)
    optimizer = torch.optim.SGD([weight], lr=0.0)
    Trainer(model, optimizer, step_fn, loader, cfg, out, dist_info=kill_worker.cpu_info()).fit()
    return sampler, seen


def test_set_epoch_is_called_and_restored_on_resume(tmp_path: Path) -> None:
    sampler, seen = _sampler_run(tmp_path / "full", 14)
    assert sampler.calls == [0, 1, 2, 3]  # 4 batches per epoch
    assert seen[0] == [0, 1] and seen[4] == [1, 2] and seen[8] == [2, 3]
    _sampler_run(tmp_path / "cut", 10)
    resumed, seen_resumed = _sampler_run(tmp_path / "cut", 14)
    # step 10 ended in batch 2 of epoch 2: resumption sets epoch 2, skips 2 batches, then epoch 3
    assert resumed.calls == [2, 3]
    assert seen_resumed == seen[10:]


# -- loggers, precision, config -------------------------------------------------------------------


def test_csv_logger_resume_truncates_and_keeps_one_header(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    log = CSVLogger(path)
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step})
    with path.open("a") as fh:
        fh.write("6,0.1")  # half-written line left by a kill
    log = CSVLogger(path, resume_step=3)
    log.log({"step": 4, "loss": 0.5, "acc": 0.9})  # a new key widens the header
    rows = read_csv(path)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[0]["loss"] == "1.0" and rows[0]["acc"] == "" and rows[3]["acc"] == "0.9"
    assert path.read_text().splitlines()[0] == "step,loss,acc"
    CSVLogger(path)  # a fresh start empties it
    assert path.read_text() == ""


def test_precision_resolution_and_helper() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", cpu)

    amp = MixedPrecision("bf16", cpu)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with amp.autocast():
        assert (a @ b).dtype == torch.bfloat16
    fp32 = MixedPrecision("auto", cpu)
    assert not fp32.enabled and fp32.scaler is None and fp32.state_dict() == {}
    with fp32.autocast():
        assert (a @ b).dtype == torch.float32

    # fp32 step with clipping equals a plain clip + SGD step
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([p], lr=1.0)
    fp32.backward((p * p).sum() / 2)  # grad = p = (3, 4), norm 5
    norm = fp32.step(opt, [p], grad_clip=1.0)
    assert norm == pytest.approx(5.0)
    assert p.detach().tolist() == pytest.approx([3 - 0.6, 4 - 0.8], abs=1e-5)


def test_train_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(max_steps=0)
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(max_steps=1, lerning_rate=0.1)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        TrainConfig(max_steps=1, precision="fp8")  # type: ignore[arg-type]
    assert TrainConfig(max_steps=1).resume is True
