"""Reviewed slide labels feed MIL training: export a bags manifest, `medcl mil train` reads it."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sqlalchemy import update

from medcl.cli import main
from medcl.review.auth import UserInfo
from medcl.review.db import Review, Store
from medcl.review.errors import ReviewError
from medcl.review.feedback import export_mil_manifest, reviewed_cases
from medcl.review.importer import import_predictions
from medcl.review.service import audit_log, list_cases, submit_review

from .helpers import prediction

N_SLIDES = 8


def _slides(store: Store, tmp_path: Path, write: Callable[..., Path]) -> dict[str, int]:
    """Slide cases, each with a tiny feature bag; the model predicts 'negative' for all."""
    g = np.random.default_rng(0)
    recs = []
    for i in range(N_SLIDES):
        x = g.normal(size=(5, 4)).astype(np.float32) + (3.0 if i % 2 else 0.0)
        with h5py.File(tmp_path / f"bag{i}.h5", "w") as f:
            f.create_dataset("features", data=x)
        art = {"slide": f"slide{i}.tiff", "bag": f"bag{i}.h5"}
        recs.append(
            prediction(
                f"slide:{i}", "slide", label="negative",
                scores={"negative": 0.6, "positive": 0.4}, artifacts=art,
            )
        )  # fmt: skip
    assert import_predictions(store, None, write(recs)).created == N_SLIDES
    return {c.case_key: c.id for c in list_cases(store, _anyone(), page_size=50).items}


def _anyone() -> UserInfo:
    from medcl.review.auth import system_user

    return system_user()


def test_corrected_slide_labels_train_mil(
    store: Store,
    store_url: str,
    reviewer: UserInfo,
    admin: UserInfo,
    tmp_path: Path,
    write_predictions: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = _slides(store, tmp_path, write_predictions)
    for i in range(N_SLIDES):  # odd slides are positive: the reviewer corrects them
        key = f"slide:{i}"
        if i % 2:
            submit_review(
                store, reviewer, ids[key], decision="correct", corrected_label="positive",
                expected_version=0,
            )  # fmt: skip
        elif i < 6:
            submit_review(store, reviewer, ids[key], decision="accept", expected_version=0)
    # slide 6: never reviewed; slide 7's correction is made bad behind the service's back
    bad = next(r for r in reviewed_cases(store, admin, "slide") if r.case_key == "slide:7")
    with store.session(write=True) as session:
        session.execute(
            update(Review).where(Review.id == bad.review_id).values(corrected_label="normal")
        )
    with pytest.raises(Exception, match="not an admin"):
        export_mil_manifest(store, reviewer)
    out = tmp_path / "bags.csv"
    args = ["review", "export", "--format", "mil-manifest", "--out", str(out), "--db", store_url]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"left out slide:7 (review {bad.review_id}): 'normal' is not in the class map" in err
    rows = list(csv.DictReader(out.open()))
    assert [(r["case_key"], r["label"], r["decision"]) for r in rows] == [
        ("slide:0", "negative", "accept"),
        ("slide:1", "positive", "correct"),
        ("slide:2", "negative", "accept"),
        ("slide:3", "positive", "correct"),
        ("slide:4", "negative", "accept"),
        ("slide:5", "positive", "correct"),
    ]
    assert {r["reviewer"] for r in rows} == {"alice"}
    assert rows[1]["bag"] == str(tmp_path / "bag1.h5") and rows[1]["bag_id"] == "bag1"
    audit = audit_log(store, admin, action="export")[0]
    assert audit.detail["format"] == "mil-manifest" and audit.detail["rows"] == 6
    torch.set_num_threads(1)
    train = [
        "mil", "train", "--bags", str(out), "--workspace", str(tmp_path / "ws"), "--folds", "1",
        "--aggregator", "mean", "--epochs", "2", "--device", "cpu", "--set", "progress=false",
        "--set", "val_fraction=0.34",
    ]  # fmt: skip
    assert main(train) == 0
    printed = capsys.readouterr().out
    assert "mean on 2 classes ['negative', 'positive']" in printed
    assert list((tmp_path / "ws" / "mil").glob("*/fold_0/model.pt"))


def test_nothing_to_export_is_an_error(
    store: Store, admin: UserInfo, tmp_path: Path, write_predictions: Callable[..., Path]
) -> None:
    _slides(store, tmp_path, write_predictions)
    with pytest.raises(ReviewError, match="no accepted or corrected slide case"):
        export_mil_manifest(store, admin)
