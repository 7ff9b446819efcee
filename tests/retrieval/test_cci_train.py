"""`medcl retrieval train-cci` on a two-hospital class-folder pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
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
def test_retrieval_eval_smoke(pool: Path, tmp_path: Path, endpoint: Any) -> None:
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
            "lmm": {
                "base_url": endpoint.url,
                "model": "m",
                "ks": [1, 3],
                "max_queries": 5,
                "max_retries": 0,
            },
            "out_dir": str(tmp_path / "eval"),
        },
    )
    endpoint.policy = lambda n_images: (500, "busy") if n_images == 2 else (200, "a")
    rows, table = run_retrieval_eval(cfg, data_root=pool)
    assert {r.selector for r in rows} == {
        "random",
        "majority",
        "topk (random init)",
        "topk",
        "invariant",
    }
    # always the majority class: exactly one class in three on the per-class average
    majority = [r for r in rows if r.selector == "majority"]
    assert all(r.macro_agreement == pytest.approx(1 / 3) for r in majority)
    assert "| class | pool (A) | queries (other domains) |" in table and "| a | 8 | 8 |" in table
    assert {r.k for r in rows} == {1, 3}
    for r in rows:
        assert 0.0 <= r.class_agreement <= 1.0 and 0.0 <= r.knn_balanced_accuracy <= 1.0
    # colour classes: nearest neighbours in any encoder's space agree far above chance (1/3)
    topk = next(r for r in rows if r.selector == "topk (random init)" and r.k == 1)
    assert topk.class_agreement > 0.6
    assert "| invariant |" in table
    assert (tmp_path / "eval" / "results.png").is_file()
    # a second run reuses the CCI encoder and the cached embeddings
    # the LMM arm: zero-shot (1 image) and k=1 / k=3 episodes for each selector, 5 queries each
    lmm = pd.read_csv(tmp_path / "eval" / "lmm_results.csv")
    assert set(zip(lmm.selector, lmm.k, strict=True)) == {("zero-shot", 0)} | {
        (s, k) for s in ("random", "topk", "invariant") for k in (1, 3)
    }
    assert (lmm.n == 5).all()
    # k=1 episodes (2 images) got HTTP 500: failed rows, not a crash
    assert (lmm[lmm.k == 1].error_rate == 1.0).all() and (lmm[lmm.k == 3].error_rate == 0).all()
    assert "| zero-shot | 0 |" in table and (tmp_path / "eval" / "lmm_results.png").is_file()
    asked = len(endpoint.requests)
    # 5 zero-shot + 15 failed k=1 requests; k=3 episodes showing the same demonstrations in
    # the same order (e.g. topk and invariant) are answered from the client's cache
    assert 5 + 15 + 1 <= asked <= 5 + 3 * 2 * 5
    # a second run reuses the CCI encoder, the cached embeddings and the kept answers
    endpoint.policy = lambda n_images: (200, "b")
    again, _ = run_retrieval_eval(cfg, data_root=pool)
    assert again == rows
    assert 0 < len(endpoint.requests) - asked <= 15  # only the failed k=1 episodes asked again
    lmm = pd.read_csv(tmp_path / "eval" / "lmm_results.csv")
    assert (lmm.error_rate == 0).all()
    assert (lmm[lmm.k == 1].lmm_accuracy > 0).all()  # now answered "b"
    # another image size: new embeddings (named by their settings), the same CCI encoder
    assert len(list((tmp_path / "eval" / "embeddings").glob("*.npz"))) == 3
    no_lmm = cfg.lmm.model_copy(update={"base_url": None, "model": None})
    bigger = cfg.model_copy(update={"image_size": 40, "lmm": no_lmm})
    run_retrieval_eval(bigger, data_root=pool)
    assert len(list((tmp_path / "eval" / "embeddings").glob("*.npz"))) == 6
    assert len(list((tmp_path / "eval").glob("cci_seed0_*"))) == 1
    # another CCI recipe trains a new encoder in its own folder
    hotter = bigger.model_copy(update={"cci": cfg.cci.model_copy(update={"temperature": 0.5})})
    run_retrieval_eval(hotter, data_root=pool)
    assert len(list((tmp_path / "eval").glob("cci_seed0_*"))) == 2


@pytest.mark.slow
def test_budget_chosen_by_validation_and_empty_class_named(pool: Path, tmp_path: Path) -> None:
    from medcl.config import build_config
    from medcl.errors import InvalidInputError
    from medcl.retrieval.evaluate import RetrievalEvalConfig, run_retrieval_eval

    data = {"path": "images", "format": "class_folders", "format_kwargs": {"domain_level": True},
            "num_workers": 0}  # fmt: skip
    base = {
        "data": data,
        "source_domains": ["A"],
        "seeds": [0],
        "ks": [1, 3],
        "image_size": 32,
        "random_encoder": None,
        "cci_budgets": [0, 1, 2],
        "cci": {"image_size": 32, "batch_size": 8, "balanced": True,
                "train": {"max_steps": 5, "device": "cpu", "ckpt_every": 1, "progress": False}},
        "out_dir": str(tmp_path / "eval"),
    }  # fmt: skip
    rows, _ = run_retrieval_eval(build_config(RetrievalEvalConfig, base), data_root=pool)
    val = pd.read_csv(tmp_path / "eval" / "validation.csv")
    assert val["steps"].tolist() == [0, 1, 2] and val["macro_agreement@3"].between(0, 1).all()
    best = int(val.loc[val["macro_agreement@3"].round(4).idxmax(), "steps"])
    assert {r.selector for r in rows} == {"random", "majority", "topk", "invariant"}
    if best:  # the seed's CCI ran for the chosen number of steps
        (cci_dir,) = (tmp_path / "eval").glob("cci_seed0_*")
        steps = (cci_dir / "train" / "metrics.csv").read_text().splitlines()[1:]
        assert int(steps[-1].split(",")[0]) == best
    with pytest.raises(
        InvalidInputError, match=r"leaves class\(es\) empty on one side: 'a' \(8 in"
    ):
        run_retrieval_eval(build_config(RetrievalEvalConfig, {**base, "max_queries": 1}),
                           data_root=pool)  # fmt: skip
