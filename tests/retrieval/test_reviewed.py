"""Reviewed retrieval cases become demonstrations (`medcl retrieval index --add-reviewed`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medcl.cli import main
from medcl.retrieval.pool import load_encoder, open_pool_index, read_reviewed, select_demonstrations
from medcl.review import auth, service
from medcl.review.db import Store


def _image(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """A checkerboard of ``colour`` and black (a texture no pool image has), lightly noised."""
    board = ((np.arange(40)[:, None] // 5 + np.arange(40)[None, :] // 5) % 2)[..., None]
    noise = np.random.default_rng(seed).integers(-4, 4, size=(40, 40, 3))
    arr = np.clip(np.array(colour)[None, None] * board + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_corrected_case_becomes_a_demonstration(
    pool: Path, pool_data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # timm:resnet18 has random weights offline: every load is seeded alike so the pool, the
    # added cases and the queries are embedded by the same network (as the demo does)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    index = tmp_path / "index"
    build = ["retrieval", "index", "--encoder", "timm:resnet18", "--data-root", str(pool)]
    assert main([*build, "--out", str(index), *pool_data_args]) == 0
    before = json.loads((index / "index.json").read_text())
    # a query the model got wrong (a yellow image the vote called 'a'); the reviewer corrects it
    query = _image(tmp_path / "queries" / "q1.png", (230, 220, 40), seed=1)
    row = {
        "case_key": "retrieval:q1", "kind": "retrieval", "model": "knn", "model_version": "v1",
        "site": "C", "label": "a", "scores": {"a": 0.67, "b": 0.33},
        "artifacts": {"query": str(query), "true_label": "c", "classes": ["a", "b", "c"]},
    }  # fmt: skip
    accepted = {**row, "case_key": "retrieval:q2", "label": "tie: a / b"}
    accepted["artifacts"] = {**row["artifacts"], "tie": ["a", "b"]}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(accepted) + "\n")
    db = f"sqlite:///{tmp_path / 'review.db'}"
    store = Store.open(db, allowed_roots=[tmp_path])
    assert service.import_predictions(store, None, tmp_path / "p.jsonl").created == 2
    alice = auth.create_user(store, "alice", "alice-password-1")
    ids = {c.case_key: c.id for c in service.list_cases(store, auth.system_user()).items}
    service.submit_review(
        store, alice, ids["retrieval:q1"], decision="correct", corrected_label="c",
        expected_version=0,
    )  # fmt: skip
    service.submit_review(store, alice, ids["retrieval:q2"], decision="accept", expected_version=0)

    add = ["retrieval", "index", "--add-reviewed", "--out", str(index), "--db", db]
    add += ["--workspace", str(tmp_path)]
    capsys.readouterr()
    torch.manual_seed(0)
    assert main(add) == 0
    out, err = capsys.readouterr()
    assert "added 1 reviewed case(s); 49 demonstrations" in out
    assert "left out retrieval:q2: the accepted prediction 'tie: a / b' is a tie" in err
    after = json.loads((index / "index.json").read_text())
    assert after["count"] == before["count"] + 1 and after["fingerprint"] != before["fingerprint"]
    assert f"fingerprint {before['fingerprint']} -> {after['fingerprint']}" in out
    (listed,) = read_reviewed(index)
    assert (listed["path"], listed["label"], listed["case_key"], listed["reviewer"]) == (
        str(query), "c", "retrieval:q1", "alice",
    )  # fmt: skip
    assert listed["decision"] == "correct" and listed["reviewed_at"]

    # the index opens against the pool as it is now (data + reviewed), and the next yellow
    # query of class c gets the corrected case as its nearest demonstration
    torch.manual_seed(0)
    encoder = load_encoder("timm:resnet18", 32)
    opened = open_pool_index(index, encoder, "timm:resnet18")
    assert opened.fingerprint == after["fingerprint"]
    meta: pd.DataFrame = opened.metadata
    added = meta[meta["source"] == "review"]
    assert added[["label", "reviewer", "case_key"]].values.tolist() == [
        ["c", "alice", "retrieval:q1"]
    ]
    nxt = _image(tmp_path / "queries" / "q3.png", (228, 222, 44), seed=3)
    demos = select_demonstrations(opened, encoder, nxt, 3)
    assert (demos[0].image_path, demos[0].label) == (query, "c")

    # run again: nothing new, nothing duplicated, fingerprint unchanged
    torch.manual_seed(0)
    assert main(add) == 0
    assert "added 0 reviewed case(s); 49 demonstrations" in capsys.readouterr().out
    again = json.loads((index / "index.json").read_text())
    assert again["fingerprint"] == after["fingerprint"] and len(read_reviewed(index)) == 1
    audits = service.audit_log(store, auth.system_user(), action="add_reviewed")
    assert [e.detail["added"] for e in audits] == [[], ["retrieval:q1"]]
    # a reviewed image removed from disk: the pool changed, the index is refused
    query.unlink()
    with pytest.raises(Exception, match="fingerprint"):
        open_pool_index(index, encoder, "timm:resnet18")
