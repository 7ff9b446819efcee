"""`medcl retrieval train-cci` on a two-hospital class-folder pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medcl.cli import main
from medcl.models.encoders import create_encoder


@pytest.mark.slow
def test_train_cci_writes_a_loadable_encoder(
    pool: Path, pool_data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cci"
    args = [
        "retrieval",
        "train-cci",
        "--encoder",
        "timm:resnet18",
        "--data-root",
        str(pool),
        "--out",
        str(out),
        *pool_data_args,
        "--set",
        "batch_size=12",
        "--set",
        "trainable_blocks=1",
        "--set",
        "train={max_steps: 3, device: cpu, log_every: 1, ckpt_every: 0, progress: false}",
    ]
    assert main(args) == 0
    assert "from 2 domains" in capsys.readouterr().out
    rows = (out / "train" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"supcon", "invariance"} <= set(header)
    enc = create_encoder(f"medcl:{out / 'encoder.pt'}")
    torch.manual_seed(0)
    fresh = create_encoder("timm:resnet18")
    own = dict(enc.named_parameters())
    changed = {k for k, p in fresh.named_parameters() if not torch.equal(p, own[k])}
    # trainable_blocks=1: layer4 trained, the stem stayed as initialised
    assert any(k.startswith("backbone.layer4") for k in changed)
    assert not any(k.startswith(("backbone.conv1", "backbone.layer1")) for k in changed)


@pytest.mark.slow
def test_retrieval_eval_smoke(pool: Path, tmp_path: Path) -> None:
    from medcl.config import build_config
    from medcl.retrieval.evaluate import RetrievalEvalConfig, run_retrieval_eval

    cfg = build_config(
        RetrievalEvalConfig,
        {
            "data": {
                "path": "images",
                "format": "class_folders",
                "format_kwargs": {"domain_level": True},
                "num_workers": 0,
            },
            "source_domains": ["A"],
            "seeds": [0],
            "ks": [1, 3],
            "image_size": 32,
            "cci": {
                "image_size": 32,
                "batch_size": 12,
                "train": {"max_steps": 2, "device": "cpu", "ckpt_every": 0, "progress": False},
            },
            "out_dir": str(tmp_path / "eval"),
        },
    )
    rows, table = run_retrieval_eval(cfg, data_root=pool)
    assert {r.selector for r in rows} == {"random", "topk (random init)", "topk", "invariant"}
    assert {r.k for r in rows} == {1, 3}
    for r in rows:
        assert 0.0 <= r.class_agreement <= 1.0 and 0.0 <= r.knn_balanced_accuracy <= 1.0
    # colour classes: nearest neighbours in any encoder's space agree far above chance (1/3)
    topk = next(r for r in rows if r.selector == "topk (random init)" and r.k == 1)
    assert topk.class_agreement > 0.6
    assert "| invariant |" in table
    assert (tmp_path / "eval" / "results.png").is_file()
    # a second run reuses the CCI encoder and the cached embeddings
    again, _ = run_retrieval_eval(cfg, data_root=pool)
    assert again == rows
