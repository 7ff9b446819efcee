"""A small client for OpenAI-compatible chat-completion servers.

One format covers local servers (vLLM, Ollama, LM Studio, llama.cpp ``llama-server``) and hosted
APIs: ``POST {base_url}/chat/completions`` with ``{model, messages, temperature, max_tokens}``;
the answer is ``choices[0].message.content``.

:class:`LMMClient` adds what a long in-context-learning evaluation needs:

* retries with exponential backoff and jitter on connection errors, timeouts, HTTP 429 and 5xx
  (a ``Retry-After`` header, in seconds or as an HTTP date, is honoured); other 4xx fail at once;
* :meth:`LMMClient.complete_many`, a thread pool bounded by ``max_concurrency`` that returns
  failures in place (:class:`LMMError`) instead of raising, so one bad item never stops a run;
* an optional disk cache keyed by sha256 of (model, messages, temperature, max_tokens), so a
  re-run only asks what it has not asked before.

The API key is read from the environment (``MEDCL_LMM_API_KEY`` by default) at each request and
is never logged nor put in an error message.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from medcl.errors import MedclError

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

_RETRY_STATUS = frozenset({408, 429})
_MAX_SLEEP_S = 120.0
_MAX_MESSAGE_CHARS = 300
# Sleep through a module attribute so tests can record the waits instead of waiting.
_sleep = time.sleep


class LMMError(MedclError):
    """A request to the model server failed, or its answer was not a chat completion.

    Attributes:
        status: the HTTP status of the last answer, ``None`` when none came (timeout, refused).
        attempts: how many requests were made.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        self.status = status
        self.attempts = attempts
        super().__init__(message)


@dataclass(frozen=True)
class LMMReply:
    """One completion: ``text`` is ``choices[0].message.content``, ``raw`` the whole JSON answer;
    ``cached`` replies come from the disk cache (``attempts == 0``); ``latency_s`` includes
    retries and their waits."""

    text: str
    raw: dict[str, Any]
    cached: bool
    attempts: int
    latency_s: float


@dataclass(frozen=True)
class _Outcome:
    """One attempt: ``data`` (the JSON answer) or ``error``; ``wait_s`` is set iff retryable."""

    data: dict[str, Any] | None = None
    error: str = ""
    status: int | None = None
    wait_s: float | None = None


def _truncate(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _server_message(response: requests.Response) -> str:
    """The error text of a failed answer: ``error.message``, ``error``, ``message`` or the body."""
    try:
        data = response.json()
    except ValueError:
        return _truncate(response.text) or response.reason or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data.get("message", data.get("detail")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return _truncate(str(error))
    return _truncate(json.dumps(data))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), else ``None``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), _MAX_SLEEP_S)


def cache_key(model: str, messages: Messages, temperature: float, max_tokens: int) -> str:
    """sha256 hex digest of the canonical JSON of (model, messages, temperature, max_tokens)."""
    payload = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def reply_text(data: Any) -> str:
    """``choices[0].message.content`` of a chat-completion answer.

    Raises:
        LMMError: ``malformed reply ...`` when the field is missing or not a string.
    """
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise LMMError(
            f"malformed reply: no choices[0].message.content in {_truncate(json.dumps(data))}"
        ) from exc
    if not isinstance(content, str):
        raise LMMError(f"malformed reply: choices[0].message.content is {type(content).__name__}")
    return content


class LMMClient:
    """Chat completions from an OpenAI-compatible server, with retries, a cache and a thread pool.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server knows.
        api_key_env: environment variable holding the key; sent as ``Authorization: Bearer``
            only when set and non-empty.
        timeout_s: per-request timeout (connect and read).
        max_retries: retries after the first attempt (``1 + max_retries`` requests at most).
        backoff_s: first retry wait; doubles each retry, times a jitter factor in [0.5, 1.5).
        max_concurrency: requests in flight at once, across all threads using this client.
        cache_dir: folder of cached answers (``<sha256>.json``); ``None`` disables the cache.
        temperature, max_tokens: sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "MEDCL_LMM_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_concurrency: int = 4,
        cache_dir: Path | None = None,
        temperature: float = 0.0,
        max_tokens: int = 16,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        for name, value in (
            ("timeout_s", timeout_s),
            ("max_concurrency", max_concurrency),
            ("max_tokens", max_tokens),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (
            ("max_retries", max_retries),
            ("backoff_s", backoff_s),
            ("temperature", temperature),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_concurrency = int(max_concurrency)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LMMClient(url={self.url!r}, model={self.model!r})"

    # ---- one request -------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _backoff(self, retry: int) -> float:
        """Wait before retry number ``retry`` (1-based): exponential, with multiplicative jitter."""
        return min(self.backoff_s * 2 ** (retry - 1) * random.uniform(0.5, 1.5), _MAX_SLEEP_S)

    def complete(self, messages: Messages) -> LMMReply:
        """Ask for one completion (or read it from the cache).

        Raises:
            LMMError: a non-retryable HTTP error (status and server message), retries exhausted,
                or a malformed answer.
        """
        start = time.perf_counter()
        try:
            body = json.dumps(
                {
                    "model": self.model,
                    "messages": messages,
                    "temperature": self.temperature,
                    "max_tokens": self.max_tokens,
                }
            )
        except (TypeError, ValueError) as exc:
            raise LMMError(f"messages are not JSON-serialisable: {exc}") from exc
        key = cache_key(self.model, messages, self.temperature, self.max_tokens)
        cached = self._cache_read(key)
        if cached is not None:
            return LMMReply(cached["text"], cached["raw"], True, 0, time.perf_counter() - start)
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(body, attempt)
            if outcome.data is not None:
                try:
                    text = reply_text(outcome.data)
                except LMMError as exc:
                    exc.status, exc.attempts = outcome.status, attempt
                    raise
                self._cache_write(key, text, outcome.data)
                return LMMReply(text, outcome.data, False, attempt, time.perf_counter() - start)
            if outcome.wait_s is None or attempt > self.max_retries:
                raise LMMError(outcome.error, status=outcome.status, attempts=attempt)
            log.warning(
                "%s; retry %d/%d in %.2f s",
                outcome.error,
                attempt,
                self.max_retries,
                outcome.wait_s,
            )
            _sleep(outcome.wait_s)

    def _attempt(self, body: str, attempt: int) -> _Outcome:
        """One POST; classifies the answer as data, a retryable failure or a final failure."""
        try:
            with self._slots:
                response = self._session().post(
                    self.url,
                    data=body.encode("utf-8"),
                    headers=self._headers(),
                    timeout=self.timeout_s,
                )
        except requests.Timeout:
            why = f"{self.url}: no answer within {self.timeout_s:g} s"
            return _Outcome(error=why, wait_s=self._backoff(attempt))
        except requests.ConnectionError as exc:
            why = f"{self.url}: connection failed ({_truncate(str(exc), 120)})"
            return _Outcome(error=why, wait_s=self._backoff(attempt))
        except requests.RequestException as exc:
            return _Outcome(error=f"{self.url}: request failed ({_truncate(str(exc), 120)})")
        status = response.status_code
        if status >= 400:
            why = f"{self.url} answered HTTP {status}: {_server_message(response)}"
            if status in _RETRY_STATUS or status >= 500:
                after = _retry_after(response.headers.get("Retry-After"))
                wait = after if after is not None else self._backoff(attempt)
                return _Outcome(error=why, status=status, wait_s=wait)
            return _Outcome(error=why, status=status)
        try:
            data = response.json()
        except ValueError:
            why = f"malformed reply from {self.url}: not JSON: {_truncate(response.text, 120)}"
            return _Outcome(error=why, status=status)
        if not isinstance(data, dict):
            why = f"malformed reply from {self.url}: not a JSON object: {_truncate(response.text)}"
            return _Outcome(error=why, status=status)
        return _Outcome(data=data, status=status)

    # ---- cache ---------------------------------------------------------------------------
    def _cache_read(self, key: str) -> dict[str, Any] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return None
        if not (isinstance(entry, dict) and isinstance(entry.get("text"), str)):
            log.warning("ignoring malformed cache entry %s", path)
            return None
        return entry

    def _cache_write(self, key: str, text: str, raw: dict[str, Any]) -> None:
        if self.cache_dir is None:
            return
        path = self.cache_dir / f"{key}.json"
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        entry = {"model": self.model, "text": text, "raw": raw}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("could not write cache entry %s: %s", path, exc)

    # ---- many requests -------------------------------------------------------------------
    def complete_many(self, batch: Sequence[Messages]) -> list[LMMReply | LMMError]:
        """:meth:`complete` for every item, ``max_concurrency`` at a time, results in input order.

        Never raises for one item: a failed item's :class:`LMMError` stands in its place.
        """

        def one(messages: Messages) -> LMMReply | LMMError:
            try:
                return self.complete(messages)
            except LMMError as exc:
                log.warning("item failed: %s", exc)
                return exc

        if not batch:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batch))) as pool:
            results = list(pool.map(one, batch))
        failed = sum(isinstance(r, LMMError) for r in results)
        log.info(
            "%d completions, %d failed, %d from cache",
            len(results),
            failed,
            sum(isinstance(r, LMMReply) and r.cached for r in results),
        )
        return results
