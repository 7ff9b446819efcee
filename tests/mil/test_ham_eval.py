"""The HAM10000 MIL protocol's pieces on synthetic features: thresholds, intervals, rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medcl.mil.ham_eval import (
    MILHamEvalConfig,
    MILRow,
    interval,
    run_one,
    table,
    threshold_from_val,
)


def test_threshold_maximises_balanced_accuracy_on_validation() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.35, 0.3, 0.9])
    # >= 0.25 misses only the negative at 0.35: balanced accuracy (2/3 + 1) / 2, the best
    t = threshold_from_val(labels, scores)
    assert t == pytest.approx(0.25)
    assert threshold_from_val(np.array([0, 1]), np.array([0.2, 0.8])) == pytest.approx(0.5)


def test_interval_is_the_t_interval_over_seeds() -> None:
    mean, half = interval(pd.Series([0.7, 0.8, 0.9]))
    assert mean == pytest.approx(0.8)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert interval(pd.Series([0.5])) == (0.5, 0.0)


def _data(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    labels = np.where(g.random(n) < 0.2, "mel", "nv")
    feats = g.normal(size=(n, 6)).astype(np.float32)
    feats[labels == "mel", 0] += 3.0
    groups = np.array([f"L{i}" for i in range(n)])
    return feats, labels, groups


@pytest.mark.parametrize("row", ["mean", "ins", "oracle"])
def test_rows_learn_the_synthetic_witnesses(row: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    feats, labels, groups = _data()
    cfg = MILHamEvalConfig.model_validate(
        {
            "bags": {"n_train": 40, "n_val": 20, "n_test": 30, "bag_size": [8, 16],
                     "witness_rate": [0.1, 0.25]},
            "train": {"epochs": 10, "lr": 0.01, "device": "cpu", "progress": False,
                      "aggregator_kwargs": {"hidden_dim": 16}},
            "train_per_aggregator": {"ins": {"ins": {"epochs": 8, "warmup_epochs": 2,
                                                     "batch_size": 32, "queue_size": 512}}},
        }
    )  # fmt: skip
    r = run_one(cfg, "synthetic", row, 0, feats, labels, groups, curves=tmp_path)
    assert r.instance_auc > 0.9 and r.bag_auc > 0.7, r
    assert 0.5 <= r.bag_balanced_accuracy <= 1.0
    if row == "ins":
        assert r.best_epoch == 7  # the last epoch of the fixed schedule
        # the per-epoch curves: pseudo-label accuracy against the true instance labels
        history = json.loads((tmp_path / "synthetic_ins_seed0.json").read_text())
        assert len(history) == 8 and 0 <= history[-1]["pseudo_label_acc"] <= 1
        assert (tmp_path / "synthetic_ins_seed0.png").is_file()


def test_table_has_one_line_per_encoder_and_row() -> None:
    rows = [MILRow("enc", "mean", s, 0.8 + 0.01 * s, 0.7, 0.6, 0.5, 3) for s in range(3)] + [
        MILRow("enc", "ins", 0, 0.9, 0.95, 0.8, 0.4, 39)
    ]
    text = table(rows)
    assert "| enc | mean | 0.810 ± 0.025 | 0.700 ± 0.000 | 0.600 ± 0.000 | 3 |" in text
    assert "| enc | ins | 0.900 ± 0.000 | 0.950 ± 0.000 | 0.800 ± 0.000 | 1 |" in text


def test_row_settings_follow_what_changes_each_row(tmp_path: Path) -> None:
    from medcl.mil.ham_eval import row_settings

    ckpt = tmp_path / "enc.pt"
    ckpt.write_bytes(b"first weights")
    enc = f"medcl:{ckpt}"
    cfg = MILHamEvalConfig.model_validate({"encoders": [enc]})
    base = {r: row_settings(cfg, enc, r) for r in ("mean", "ins", "ins_e2e", "oracle")}
    ins_changed = cfg.model_copy(update={"train_per_aggregator": {"ins": {"ins": {"epochs": 3}}}})
    assert row_settings(ins_changed, enc, "ins") != base["ins"]
    assert row_settings(ins_changed, enc, "mean") == base["mean"]  # INS options are INS's only
    ckpt.write_bytes(b"retrained weights")  # the same name, other weights
    assert row_settings(cfg, enc, "mean") != base["mean"]
    assert row_settings(cfg, enc, "ins_e2e") == base["ins_e2e"]  # its encoder is e2e.encoder
    bags = cfg.model_copy(update={"bags": cfg.bags.model_copy(update={"n_train": 10})})
    assert row_settings(bags, enc, "oracle") != row_settings(cfg, enc, "oracle")


def test_cached_rows_are_reused_only_with_their_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medcl.mil.ham_eval as ham_eval

    feats, labels, groups = _data(200)
    monkeypatch.setattr(ham_eval, "embed_images", lambda *a, **k: (feats, labels, groups))
    calls: list[tuple[str, int]] = []

    def fake_run_one(cfg: MILHamEvalConfig, encoder: str, row: str, seed: int, *a: object,
                     **k: object) -> MILRow:  # fmt: skip
        calls.append((row, seed))
        return MILRow(encoder, row, seed, 0.8, 0.7, 0.6, 0.5, 1)

    monkeypatch.setattr(ham_eval, "run_one", fake_run_one)
    cfg = MILHamEvalConfig.model_validate(
        {"encoders": ["enc"], "rows": ["mean", "ins"], "seeds": [0], "out_dir": tmp_path}
    )
    ham_eval.run_mil_ham_eval(cfg, data_root=tmp_path)
    assert calls == [("mean", 0), ("ins", 0)]
    ham_eval.run_mil_ham_eval(cfg, data_root=tmp_path)
    assert len(calls) == 2  # same settings: both reused
    changed = cfg.model_copy(update={"train_per_aggregator": {"ins": {"ins": {"epochs": 3}}}})
    rows, _ = ham_eval.run_mil_ham_eval(changed, data_root=tmp_path)
    assert calls[2:] == [("ins", 0)]  # only the row whose settings changed
    stored = pd.read_csv(tmp_path / "results.csv", dtype={"settings": str})
    assert set(stored.settings) == {r.settings for r in rows} and "" not in set(stored.settings)
    # a results.csv of an older medcl (no settings column) is never trusted
    stored.drop(columns="settings").to_csv(tmp_path / "results.csv", index=False)
    ham_eval.run_mil_ham_eval(changed, data_root=tmp_path)
    assert calls[3:] == [("mean", 0), ("ins", 0)]
    # the report-only table leaves out rows of other settings
    _, text = ham_eval.run_mil_ham_eval(cfg.model_copy(update={"report_only": True}))
    assert "| enc | mean |" in text and "| enc | ins |" not in text


def test_committed_config_uses_the_registry_offline_encoder() -> None:
    from medcl.config import load_config
    from medcl.models.encoders import PRETRAINED_ENCODER

    path = Path(__file__).resolve().parents[2] / "configs" / "eval" / "mil_ham.yaml"
    cfg = load_config(MILHamEvalConfig, path)
    assert cfg.encoders[0] == PRETRAINED_ENCODER and cfg.e2e.encoder == PRETRAINED_ENCODER
    assert set(cfg.rows) == {"mean", "max", "abmil", "transmil", "ins", "ins_e2e", "oracle"}


def test_oracle_chooses_its_regularisation_on_validation_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wide noisy features and few witnesses: the unregularised fit overfits, the chosen C not."""
    import medcl.mil.ham_eval as ham_eval
    from medcl.mil.data import Bag

    g = np.random.default_rng(0)

    def bags(n: int) -> list[Bag]:
        out = []
        for i in range(n):
            inst = (g.random(12) < (0.15 if i % 2 else 0.0)).astype(np.int64)
            x = g.normal(size=(12, 300)).astype(np.float32)
            x[:, 0] += 1.5 * inst
            out.append(Bag(torch.from_numpy(x), int(inst.max()), f"b{i}",
                           instance_labels=torch.from_numpy(inst)))  # fmt: skip
        return out

    train, val, test = bags(40), bags(30), bags(60)
    y = np.concatenate([b.instance_labels.numpy() for b in test if b.instance_labels is not None])

    def test_auc() -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, np.concatenate(ham_eval._oracle(train, val, test)[2])))

    chosen = test_auc()
    monkeypatch.setattr(ham_eval, "ORACLE_C", (1.0,))
    assert chosen > test_auc() + 0.02  # 0.713 vs 0.687 with this seed
