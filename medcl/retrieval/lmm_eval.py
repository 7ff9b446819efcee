"""The LMM arm of ``medcl retrieval eval``: accuracy of a real model given each selector's picks.

For every (seed, selector, k) and every query, the episode (k demonstrations chosen by the
selector, then the query) goes to an OpenAI-compatible endpoint, and the reply is parsed to one
allowed label or ``"unparsed"``. ``k = 0`` (the ``zero-shot`` row) is the baseline.

A long evaluation must survive a flaky server, so:

* answers are appended to ``lmm_answers.jsonl`` chunk by chunk; a re-run skips every episode
  already answered (parsed or not) and asks again only those that failed (HTTP 500 after the
  retries, timeouts): progress is never lost;
* a failed request or a nonsense reply is one row (``status`` ``error`` or ``unparsed``), never an
  exception; both count as wrong in the accuracy, and their rates are reported;
* after ``max_consecutive_errors`` failures in a row the arm stops (the endpoint is down), logs
  why and leaves the rest for the next run, instead of spending hours on retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from medcl.config import StrictModel
from medcl.errors import InvalidInputError
from medcl.retrieval.lmm import LMMClient, LMMError, LMMReply
from medcl.retrieval.parse import UNPARSED, parse_label
from medcl.retrieval.prompts import Demonstration, build_messages

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
ANSWERS_FILE = "lmm_answers.jsonl"


class LMMArmConfig(StrictModel):
    """Where the model is and which episodes it sees; no endpoint means no LMM arm."""

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible root (…/v1); env MEDCL_LMM_BASE_URL"
    )
    model: str | None = Field(default=None, description="model name; env MEDCL_LMM_MODEL")
    api_key_env: str = "MEDCL_LMM_API_KEY"
    ks: list[int] = Field(default_factory=lambda: [3, 7])
    selectors: list[str] = Field(default_factory=lambda: ["random", "topk", "invariant"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    max_queries: int = Field(default=200, ge=1)
    chunk: int = Field(default=16, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=32, ge=1)
    max_consecutive_errors: int = Field(default=32, ge=1)
    image_max_side: int = Field(default=384, ge=32)
    label_descriptions: dict[str, str] | None = None

    def endpoint(self) -> tuple[str, str] | None:
        """``(base_url, model)`` from the config or the environment, ``None`` when unset."""
        url = self.base_url or os.environ.get("MEDCL_LMM_BASE_URL")
        model = self.model or os.environ.get("MEDCL_LMM_MODEL")
        if not url:
            return None
        if not model:
            raise ValueError("lmm.base_url is set but lmm.model is not (or MEDCL_LMM_MODEL)")
        return url, model


@dataclass(frozen=True)
class Episode:
    """One query shown to the model with ``k`` demonstrations picked by ``selector``."""

    seed: int
    selector: str
    k: int
    query: Path
    true_label: str
    demos: tuple[Demonstration, ...]

    @property
    def key(self) -> str:
        """Stable id of the episode: its settings, the query and the demonstrations shown."""
        parts = [str(self.seed), self.selector, str(self.k), str(self.query)]
        parts += [f"{d.image_path}={d.label}" for d in self.demos]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Answer:
    """The model's answer to one episode (a line of ``lmm_answers.jsonl``)."""

    key: str
    seed: int
    selector: str
    k: int
    query: str
    true_label: str
    answer: str
    status: str  # "ok" | "unparsed" | "error"
    raw: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "ok" and self.answer == self.true_label


def client_from_config(cfg: LMMArmConfig, cache_dir: Path | None) -> LMMClient | None:
    """The endpoint's client, or ``None`` when no endpoint is configured."""
    endpoint = cfg.endpoint()
    if endpoint is None:
        return None
    return LMMClient(
        endpoint[0],
        endpoint[1],
        api_key_env=cfg.api_key_env,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        max_concurrency=cfg.max_concurrency,
        cache_dir=cache_dir,
        max_tokens=cfg.max_tokens,
    )


def load_answers(path: Path) -> dict[str, Answer]:
    """Answers saved so far, by episode key; a torn last line (killed run) is skipped."""
    done: dict[str, Answer] = {}
    if not path.is_file():
        return done
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            answer = Answer(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            log.warning("%s:%d: skipping an unreadable answer line (%s)", path, n, exc)
            continue
        done[answer.key] = answer
    return done


def _answer(ep: Episode, result: LMMReply | LMMError, labels: list[str]) -> Answer:
    base: dict[str, Any] = {
        "key": ep.key,
        "seed": ep.seed,
        "selector": ep.selector,
        "k": ep.k,
        "query": str(ep.query),
        "true_label": ep.true_label,
    }
    if isinstance(result, LMMError):
        return Answer(**base, answer=UNPARSED, status="error", raw=str(result)[:300])
    label = parse_label(result.text, labels)
    status = "unparsed" if label == UNPARSED else "ok"
    return Answer(**base, answer=label, status=status, raw=result.text[:300])


def _messages(ep: Episode, labels: list[str], cfg: LMMArmConfig) -> list[dict[str, Any]] | LMMError:
    try:
        return build_messages(
            ep.query,
            list(ep.demos),
            labels=labels,
            label_descriptions=cfg.label_descriptions,
            image_max_side=cfg.image_max_side,
        )
    except InvalidInputError as exc:  # an unreadable image is this episode's error, not the run's
        return LMMError(str(exc))


def run_lmm_arm(
    episodes: Sequence[Episode],
    labels: list[str],
    client: LMMClient,
    answers_path: Path,
    cfg: LMMArmConfig,
) -> list[Answer]:
    """Ask the model every episode not answered yet; returns the answers of all ``episodes``.

    Episodes whose last attempt failed (``status == "error"``) are asked again.
    """
    from tqdm.auto import tqdm

    done = {k: a for k, a in load_answers(answers_path).items() if a.status != "error"}
    todo = [ep for ep in episodes if ep.key not in done]
    log.info("LMM arm: %d episodes, %d already answered", len(episodes), len(episodes) - len(todo))
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    streak = 0
    bar = tqdm(total=len(todo), desc="LMM episodes", unit="ep", disable=None)
    with answers_path.open("a", encoding="utf-8") as fh:
        for start in range(0, len(todo), cfg.chunk):
            part = todo[start : start + cfg.chunk]
            built = [_messages(ep, labels, cfg) for ep in part]
            asked = client.complete_many([m for m in built if not isinstance(m, LMMError)])
            it = iter(asked)
            results = [m if isinstance(m, LMMError) else next(it) for m in built]
            for ep, result in zip(part, results, strict=True):
                answer = _answer(ep, result, labels)
                fh.write(json.dumps(asdict(answer)) + "\n")
                done[ep.key] = answer
                streak = streak + 1 if answer.status == "error" else 0
            fh.flush()
            bar.update(len(part))
            if streak >= cfg.max_consecutive_errors:
                log.error(
                    "LMM arm stopped after %d failed requests in a row (last: %s); the %d "
                    "answers so far are kept in %s and a re-run resumes",
                    streak,
                    done[part[-1].key].raw,
                    sum(a.status != "error" for a in done.values()),
                    answers_path,
                )
                break
    bar.close()
    return [done[ep.key] for ep in episodes if ep.key in done]


def summarise(answers: Iterable[Answer]) -> pd.DataFrame:
    """Accuracy per (selector, k, seed); unparsed and failed answers count as wrong.

    Returns:
        columns ``selector, k, seed, n, lmm_accuracy, unparsed_rate, error_rate``.
    """
    df = pd.DataFrame(
        [
            {
                "selector": a.selector,
                "k": a.k,
                "seed": a.seed,
                "correct": a.correct,
                "unparsed": a.status == "unparsed",
                "error": a.status == "error",
            }
            for a in answers
        ]
    )
    if df.empty:
        cols = ["selector", "k", "seed", "n", "lmm_accuracy", "unparsed_rate", "error_rate"]
        return pd.DataFrame(columns=cols)
    out = df.groupby(["selector", "k", "seed"], sort=False).agg(
        n=("correct", "size"),
        lmm_accuracy=("correct", "mean"),
        unparsed_rate=("unparsed", "mean"),
        error_rate=("error", "mean"),
    )
    return out.reset_index()


def lmm_table(summary: pd.DataFrame) -> str:
    """Markdown: one row per selector and k, mean +- std over seeds."""
    lines = [
        "| LMM episodes | k | accuracy | unparsed | failed requests | queries x seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (selector, k), grp in summary.groupby(["selector", "k"], sort=False):
        std = float(grp.lmm_accuracy.std(ddof=1)) if len(grp) > 1 else 0.0
        lines.append(
            f"| {selector} | {k} | {grp.lmm_accuracy.mean():.3f} +- {std:.3f} | "
            f"{grp.unparsed_rate.mean():.3f} | {grp.error_rate.mean():.3f} | {int(grp.n.sum())} |"
        )
    return "\n".join(lines) + "\n"
