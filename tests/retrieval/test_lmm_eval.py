"""The LMM arm: answers kept, failures and nonsense never crash a run, and a re-run resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medcl.retrieval.lmm_eval import (
    ZERO_SHOT,
    Episode,
    LMMArmConfig,
    client_from_config,
    lmm_table,
    load_answers,
    run_lmm_arm,
    summarise,
)
from medcl.retrieval.prompts import Demonstration

Reply = tuple[int, str]
Endpoint = Any  # tests/retrieval/conftest.py: a chat server whose replies follow ``policy``

LABELS = ["a", "b", "c"]


@pytest.fixture
def episodes(tmp_path: Path) -> list[Episode]:
    """4 queries (true labels a, b, a, b) x {zero-shot, k=1, k=2}."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    demos = (Demonstration(paths[4], "b", 0.9, "A"), Demonstration(paths[5], "c", 0.8, "A"))
    out = []
    for i, truth in enumerate("abab"):
        out.append(Episode(0, ZERO_SHOT, 0, paths[i], truth, ()))
        out += [Episode(0, "topk", k, paths[i], truth, demos[:k]) for k in (1, 2)]
    return out


def _config(endpoint: Endpoint, **extra: Any) -> LMMArmConfig:
    opts: dict[str, Any] = {"base_url": endpoint.url, "model": "m", "max_retries": 0, "chunk": 3}
    return LMMArmConfig(**{**opts, **extra})


def _policy(n_images: int) -> Reply:
    # zero-shot (1 image): nonsense; one demonstration (2 images): "b"; two (3 images): HTTP 500
    return {1: (200, "I cannot tell."), 2: (200, "Answer: b"), 3: (500, "overloaded")}[n_images]


def test_answers_nonsense_and_500_are_rows_not_crashes(
    endpoint: Endpoint, episodes: list[Episode], tmp_path: Path
) -> None:
    endpoint.policy = _policy
    cfg = _config(endpoint)
    client = client_from_config(cfg, None)
    assert client is not None
    answers = run_lmm_arm(episodes, LABELS, client, tmp_path / "answers.jsonl", cfg)
    assert len(answers) == 12 and len(endpoint.requests) == 12
    by = {(a.selector, a.k, a.query): a for a in answers}
    zero = [a for a in answers if a.selector == ZERO_SHOT]
    assert {(a.status, a.answer) for a in zero} == {("unparsed", "unparsed")}
    k1 = [a for a in answers if a.k == 1]
    assert {(a.status, a.answer) for a in k1} == {("ok", "b")}
    assert [a.correct for a in k1] == [False, True, False, True]
    k2 = [a for a in answers if a.k == 2]
    assert all(a.status == "error" and "500" in a.raw for a in k2)
    assert len(by) == 12

    summary = summarise(answers).set_index(["selector", "k"])
    assert summary.loc[(ZERO_SHOT, 0), "lmm_accuracy"] == 0.0
    assert summary.loc[(ZERO_SHOT, 0), "unparsed_rate"] == 1.0
    assert summary.loc[("topk", 1), "lmm_accuracy"] == 0.5
    assert summary.loc[("topk", 2), "error_rate"] == 1.0
    table = lmm_table(summarise(answers))
    assert "| zero-shot | 0 | 0.000 +- 0.000 | 1.000 | 0.000 | 4 |" in table
    assert "| topk | 1 | 0.500 +- 0.000 | 0.000 | 0.000 | 4 |" in table


def test_rerun_asks_only_what_failed(
    endpoint: Endpoint, episodes: list[Episode], tmp_path: Path
) -> None:
    endpoint.policy = _policy
    cfg = _config(endpoint)
    client = client_from_config(cfg, None)
    assert client is not None
    path = tmp_path / "answers.jsonl"
    run_lmm_arm(episodes, LABELS, client, path, cfg)
    endpoint.requests.clear()
    endpoint.policy = lambda n: (200, "a")  # the server recovered
    answers = run_lmm_arm(episodes, LABELS, client, path, cfg)
    assert endpoint.requests == [3, 3, 3, 3]  # only the four k=2 episodes, which had failed
    assert all(a.status != "error" for a in answers)
    assert [a.correct for a in answers if a.k == 2] == [True, False, True, False]
    assert [a.status for a in answers if a.k == 0] == ["unparsed"] * 4  # kept, not re-asked


def test_torn_last_line_is_skipped_and_reasked(
    endpoint: Endpoint, episodes: list[Episode], tmp_path: Path
) -> None:
    cfg = _config(endpoint)
    client = client_from_config(cfg, None)
    assert client is not None
    path = tmp_path / "answers.jsonl"
    run_lmm_arm(episodes[:3], LABELS, client, path, cfg)
    with path.open("a") as fh:
        fh.write('{"key": "abc", "seed"')  # a run killed mid-write
    assert len(load_answers(path)) == 3
    endpoint.requests.clear()
    answers = run_lmm_arm(episodes, LABELS, client, path, cfg)
    assert len(answers) == 12 and len(endpoint.requests) == 9


def test_a_dead_endpoint_stops_the_arm_and_keeps_progress(
    endpoint: Endpoint, episodes: list[Episode], tmp_path: Path
) -> None:
    endpoint.policy = lambda n: (500, "down")
    cfg = _config(endpoint, max_consecutive_errors=4, chunk=2)
    client = client_from_config(cfg, None)
    assert client is not None
    answers = run_lmm_arm(episodes, LABELS, client, tmp_path / "a.jsonl", cfg)
    assert len(endpoint.requests) == 4 and len(answers) == 4  # stopped after two chunks
    assert all(a.status == "error" for a in answers)


def test_unreadable_query_image_is_an_error_row(
    endpoint: Endpoint, episodes: list[Episode], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = Episode(0, ZERO_SHOT, 0, broken, "a", ())
    cfg = _config(endpoint)
    client = client_from_config(cfg, None)
    assert client is not None
    answers = run_lmm_arm([bad, episodes[0]], LABELS, client, tmp_path / "a.jsonl", cfg)
    assert answers[0].status == "error" and "broken.png" in answers[0].raw
    assert answers[1].status == "ok" and len(endpoint.requests) == 1


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDCL_LMM_BASE_URL", raising=False)
    assert client_from_config(LMMArmConfig(), None) is None
    monkeypatch.setenv("MEDCL_LMM_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match=r"lmm.model is not"):
        LMMArmConfig().endpoint()
    monkeypatch.setenv("MEDCL_LMM_MODEL", "llava")
    assert LMMArmConfig().endpoint() == ("http://127.0.0.1:9/v1", "llava")


def test_episode_key_depends_on_what_is_shown(episodes: list[Episode]) -> None:
    keys = {ep.key for ep in episodes}
    assert len(keys) == len(episodes)
    ep = episodes[2]  # k=2
    swapped = Episode(ep.seed, ep.selector, ep.k, ep.query, ep.true_label, ep.demos[::-1])
    assert Episode(**ep.__dict__).key == ep.key
    assert swapped.key != ep.key  # the order shown matters to the model
