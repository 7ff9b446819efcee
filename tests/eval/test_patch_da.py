"""`medcl eval patch-da`: a source-site probe tested on the target site, with a SimCLR curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.eval.patch_da import PatchDAEvalConfig, run_patch_da_eval


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site_a and site_b (tinted) with red / blue images; site_c has red images only."""
    root = tmp_path_factory.mktemp("da")
    rng = np.random.default_rng(0)
    colours = {"red": (190, 70, 70), "blue": (70, 80, 190)}
    for site, tint, classes in (("a", 0, colours), ("b", 50, colours), ("c", 0, ["red"])):
        for cls in classes:
            (root / site / cls).mkdir(parents=True)
            for i in range(12):
                arr = np.array(colours[cls])[None, None] + tint + rng.integers(-40, 40, (32, 32, 3))
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
                img.save(root / site / cls / f"{site}{cls}{i}.png")
    return root


def _cfg(root: Path, out: Path, **kw: object) -> PatchDAEvalConfig:
    data = {"path": str(root), "format": "class_folders", "format_kwargs": {"domain_level": True},
            "num_workers": 0, "use": "all"}  # fmt: skip
    pretrain = {"image_size": 32, "batch_size": 8, "projection_hidden": 32, "projection_dim": 16,
                "train": {"max_steps": 2, "device": "cpu", "progress": False,
                          "tensorboard": False}}  # fmt: skip
    base = {"data": data, "source_domains": ["a"], "target_domains": ["b"], "seeds": [0],
            "random_encoder": "timm:resnet18", "encoder": "timm:resnet18", "pretrain": pretrain,
            "curve_every": 1, "image_size": 32, "k": 3, "out_dir": str(out)}  # fmt: skip
    return PatchDAEvalConfig.model_validate({**base, **kw})


@pytest.mark.slow
def test_rows_curve_table_and_reuse(sites: Path, tmp_path: Path) -> None:
    cfg = _cfg(sites, tmp_path / "da")
    rows, table = run_patch_da_eval(cfg)
    assert [(r.method, r.step) for r in rows] == [
        ("random init", 0),
        ("ImageNet", 0),
        ("ImageNet + SimCLR", 1),
        ("ImageNet + SimCLR", 2),
    ]
    for r in rows:
        assert (r.n_source, r.n_target) == (24, 24)
        assert 0 <= r.linear_balanced_accuracy <= 1 and 0 <= r.knn_balanced_accuracy <= 1
    # the colour classes survive the tint for a linear probe on any features
    assert max(r.linear_balanced_accuracy for r in rows) > 0.7
    assert "| class | a (probe train) | b (probe test) |" in table and "| red | 12 | 12 |" in table
    assert "| ImageNet + SimCLR | 2 |" in table
    saved = pd.read_csv(tmp_path / "da" / "results.csv")
    assert len(saved) == 4 and (tmp_path / "da" / "curve.png").is_file()
    # per-class target recall of the linear probe; its mean is the balanced accuracy
    for r, (_, csv_row) in zip(rows, saved.iterrows(), strict=True):
        assert set(r.linear_recall) == {"blue", "red"}
        assert np.isclose(np.mean(list(r.linear_recall.values())), r.linear_balanced_accuracy)
        assert np.isclose(csv_row["linear_recall_red"], r.linear_recall["red"])
    assert "| encoder | SimCLR steps | blue | red |" in table
    again, _ = run_patch_da_eval(cfg)  # the finished seed is reused
    assert again == rows
    longer = cfg.model_copy(deep=True)
    longer.pretrain.train.max_steps = 3
    with pytest.raises(InvalidInputError, match=r"seed0: holds outputs made with other settings"):
        run_patch_da_eval(longer)
    # another probe (a C grid chosen on the source site) re-scores the same SimCLR checkpoints
    ckpts = sorted((tmp_path / "da" / "seed0" / "simclr" / "train").glob("ckpt_*.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    rescored, _ = run_patch_da_eval(cfg.model_copy(update={"probe_cs": [0.01, 1.0]}))
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps and len(ckpts) == 2
    assert [(r.method, r.step) for r in rescored] == [(r.method, r.step) for r in rows]
    assert {r.linear_c for r in rescored} <= {0.01, 1.0} and {r.linear_c for r in rows} == {1.0}
    assert len(list((tmp_path / "da" / "seed0").glob("rows_*.json"))) == 2


def test_bad_sites_are_named(sites: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"domain value\(s\) zz not in the domain column; "):
        run_patch_da_eval(_cfg(sites, tmp_path / "x", target_domains=["zz"]))
    with pytest.raises(InvalidInputError) as err:
        run_patch_da_eval(_cfg(sites, tmp_path / "y", target_domains=["c"]))
    assert "leaves class(es) empty on one side: 'blue' (12 source, 0 target)" in str(err.value)


def test_shipped_site_shift_configs_validate() -> None:
    from medcl.config import load_config
    from medcl.retrieval.evaluate import RetrievalEvalConfig

    configs = Path(__file__).resolve().parents[2] / "configs" / "eval"
    da = load_config(PatchDAEvalConfig, configs / "patch_da.yaml")
    assert da.encoder == "offline:efficientnet_lite0-imagenet" and da.target_domains == [
        "rosendahl"
    ]
    for name in ("retrieval_site.yaml", "retrieval.yaml"):
        cfg = load_config(RetrievalEvalConfig, configs / name)
        assert cfg.encoder == da.encoder and cfg.cci.balanced and cfg.cci_budgets
