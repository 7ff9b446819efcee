"""NT-Xent against a plain loop over anchors; gathered negatives in one and in two processes."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medcl.losses.ntxent import NTXentLoss, id_info_nce
from medcl.losses.registry import LOSSES, create_loss, list_losses
from medcl.losses.supcon import SupConLoss


def reference_anchor_losses(z: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-anchor -1/|P| sum_p log(exp(s_ip) / sum_{a != i} exp(s_ia)), same id = positive."""
    n = z.shape[0]
    out = []
    for i in range(n):

        def sim(j: int, i: int = i) -> torch.Tensor:
            return torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) / temperature

        zero = z.new_zeros(())
        den = sum((torch.exp(sim(a)) for a in range(n) if a != i), zero)
        pos = [p for p in range(n) if p != i and ids[p] == ids[i]]
        out.append(-sum((torch.log(torch.exp(sim(p)) / den) for p in pos), zero) / len(pos))
    return torch.stack(out)


def reference_ntxent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    ids = torch.arange(z1.shape[0]).repeat(2)
    return reference_anchor_losses(torch.cat([z1, z2]), ids, temperature).mean()


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_matches_reference_values_and_gradients(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = NTXentLoss(temperature)(z1, z2)
    ref = reference_ntxent(z1, z2, temperature)
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, ref, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss, (z1, z2))
    ref_grads = torch.autograd.grad(ref, (z1, z2))
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=0)


def test_hand_computed_orthogonal_identical_views() -> None:
    # z1 = z2 = [e1, e2], T = 1: each anchor has s = 1 with its positive, 0 with two negatives.
    z = torch.eye(2, dtype=torch.float64)
    assert NTXentLoss(1.0)(z, z.clone()).item() == pytest.approx(math.log(1 + 2 / math.e))
    # One image: the positive is the only candidate, so the loss is log 1 = 0.
    one = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert NTXentLoss(0.1)(one, -one).item() == pytest.approx(0.0, abs=1e-12)


def test_gather_is_a_noop_in_one_process() -> None:
    assert not dist.is_initialized()
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    plain = NTXentLoss(0.2)(z1, z2)
    gathered = NTXentLoss(0.2, gather_distributed=True)(z1, z2)
    assert torch.equal(plain, gathered)


def test_float32_inputs_give_float32_loss() -> None:
    z1, z2 = torch.randn(2, 3, 4)
    assert NTXentLoss()(z1, z2).dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be a positive number"),
        ({"temperature": -1.0}, "temperature must be a positive number"),
        ({"gather_distributed": "yes"}, "gather_distributed must be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NTXentLoss(**kwargs)  # type: ignore[arg-type]


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"z1 and z2 must both have shape \(B, D\)"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"z1 and z2 must both have shape \(B, D\)"):
        NTXentLoss()(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match=r"ids \(N,\)"):
        id_info_nce(torch.randn(3, 2), torch.arange(2), temperature=0.1)


def test_registry_builds_every_loss_and_lists_names_on_error() -> None:
    assert list_losses() == ["dense", "ntxent", "supcon"] == LOSSES.names()
    loss = create_loss("ntxent", temperature=0.3)
    assert isinstance(loss, NTXentLoss) and loss.temperature == 0.3
    assert isinstance(create_loss("supcon"), SupConLoss)
    with pytest.raises(
        ValueError, match="unknown loss 'simclr'; valid names: dense, ntxent, supcon"
    ):
        create_loss("simclr")


# --- two gloo processes -------------------------------------------------------------------------

B_PER_RANK, DIM, WORLD = 3, 4, 2


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    n = B_PER_RANK * WORLD
    z1 = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    z2 = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    feats = torch.randn(n, 3, DIM, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    return z1, z2, feats, labels


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        z1, z2, feats, labels = _global_batch()
        part = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
        a = z1[part].clone().requires_grad_()
        b = z2[part].clone().requires_grad_()
        ntxent = NTXentLoss(0.5, gather_distributed=True)(a, b)
        ntxent.backward()
        f = feats[part].clone().requires_grad_()
        supcon = SupConLoss(0.5, gather_distributed=True)(f, labels[part])
        supcon.backward()
        result = {"ntxent": ntxent.detach(), "grad1": a.grad, "grad2": b.grad}
        result.update({"supcon": supcon.detach(), "grad_f": f.grad})
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_gathered_losses_match_global_batch_in_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rank's loss is the global loss restricted to its anchors; grads = W x global grads.

    ``gather_with_grad`` sums every rank's gradient into the local embeddings, so DDP's average
    of the ranks' gradients (``/ W``) is the gradient of the one-process loss on the global batch.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(_free_port(), os.fspath(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z1, z2, feats, labels = _global_batch()
    n = z1.shape[0]
    z1.requires_grad_()
    z2.requires_grad_()
    feats.requires_grad_()
    per_anchor = reference_anchor_losses(
        torch.cat([z1, z2]), torch.arange(n).repeat(2), temperature=0.5
    )
    grad1, grad2 = torch.autograd.grad(per_anchor.mean(), (z1, z2))
    stacked = feats.transpose(0, 1).reshape(3 * n, DIM)
    sup_anchor = reference_anchor_losses(stacked, labels.repeat(3), temperature=0.5)
    (grad_f,) = torch.autograd.grad(sup_anchor.mean(), (feats,))
    for rank, res in enumerate(results):
        part = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
        own = torch.cat([per_anchor[:n][part], per_anchor[n:][part]]).mean()
        assert torch.allclose(res["ntxent"], own, atol=1e-5, rtol=0)
        assert torch.allclose(res["grad1"] / WORLD, grad1[part], atol=1e-5, rtol=0)
        assert torch.allclose(res["grad2"] / WORLD, grad2[part], atol=1e-5, rtol=0)
        sup_own = sup_anchor.view(3, n)[:, part].mean()
        assert torch.allclose(res["supcon"], sup_own, atol=1e-5, rtol=0)
        assert torch.allclose(res["grad_f"] / WORLD, grad_f[part], atol=1e-5, rtol=0)
    # The ranks' mean is the one-process loss over the concatenated batch.
    mean_loss = torch.stack([r["ntxent"] for r in results]).mean()
    assert torch.allclose(mean_loss, per_anchor.mean(), atol=1e-5, rtol=0)
