"""Distributed helpers: no-ops in one process; two gloo processes under torchrun train like one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from medcl.engine import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    cleanup,
    gather_with_grad,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    resolve_device,
    unwrap_model,
    wrap_ddp,
)
from medcl.errors import ConfigError

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]
TORCHRUN_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def test_helpers_are_noops_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert info.device == torch.device("cpu") and not info.distributed
    assert not dist.is_initialized()
    z = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(z) is z
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_mean(t) is t
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    barrier()
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    cleanup()
    assert not dist.is_initialized()


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'tpu' is not one of auto, cpu, cuda"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed("cpu")


def _run(cmd: list[str], out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # timeout kills the launcher; torchrun then terminates its workers.
    result = subprocess.run(
        [*cmd, str(WORKER), str(out)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open(newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable], single)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run(torchrun, ddp)

    # same loss trajectory (the logged loss is the mean over ranks) and the same final weights
    losses_single, losses_ddp = _losses(single), _losses(ddp)
    assert len(losses_single) == len(losses_ddp) == 6
    assert losses_ddp == pytest.approx(losses_single, abs=1e-5)
    assert losses_single[-1] < losses_single[0]
    w_single = torch.load(single / "weights.pt", weights_only=True)
    w_ddp = torch.load(ddp / "weights.pt", weights_only=True)
    for key, value in w_single.items():
        assert torch.allclose(value, w_ddp[key], rtol=0, atol=1e-5), key
    # only rank 0 wrote checkpoints and logs; the checkpoint holds both ranks' generator states
    assert sorted(p.name for p in ddp.glob("ckpt_step*.pt")) == [
        "ckpt_step00000003.pt",
        "ckpt_step00000006.pt",
    ]
    ckpt = torch.load(ddp / "ckpt_step00000006.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["epoch"] == 1  # 32 samples / 8 = 4 steps per epoch
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # seeded per rank

    # gather_with_grad: rank order, and the gradient of the sum of both ranks' losses,
    # d/dz [sum_r (r + 1) * sum(gathered ** 2)] = 2 * z * (1 + 2)
    reports = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    expected_gathered = torch.cat([base, base + 10]).tolist()
    for rank, report in enumerate(reports):
        assert report["world_size"] == 2 and report["step"] == 6
        assert report["gathered"] == expected_gathered
        assert report["grad"] == (2 * (base + 10 * rank) * 3).tolist()
    single_report = json.loads((single / "rank0.json").read_text())
    assert single_report["world_size"] == 1 and single_report["grad"] == (2 * base).tolist()
