"""LMMClient against a scripted OpenAI-compatible server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from medcl.retrieval import lmm
from medcl.retrieval.lmm import LMMClient, LMMError, LMMReply, cache_key
from medcl.retrieval.prompts import Demonstration, build_messages

KEY_ENV = "MEDCL_TEST_LMM_KEY"


@dataclass
class Reply:
    """One scripted answer: status, body (dict -> JSON, str -> raw), headers, delay before it."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=lambda: completion("mel"))
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }


class FakeServer:
    """Records every request; answers from ``script`` (FIFO), else from ``default(body)``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: deque[Reply] = deque()
        self.default: Callable[[dict[str, Any]], Reply] = lambda body: Reply()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with server.lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                counted = True

                def leave() -> None:
                    # Leave the count *before* the reply goes out: once the client has
                    # its reply it may send the next request, possibly before this
                    # thread runs again, and that overlap is not the client's doing.
                    nonlocal counted
                    if counted:
                        with server.lock:
                            server.active -= 1
                        counted = False

                try:
                    raw = self.rfile.read(int(self.headers["Content-Length"]))
                    body = json.loads(raw)
                    with server.lock:
                        server.requests.append(
                            {"path": self.path, "headers": dict(self.headers), "body": body}
                        )
                        reply = server.script.popleft() if server.script else None
                    reply = reply or server.default(body)
                    time.sleep(reply.delay_s)
                    leave()
                    payload = (
                        json.dumps(reply.body) if isinstance(reply.body, dict) else reply.body
                    ).encode()
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    leave()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    thread = threading.Thread(target=fake.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's backoff waits instead of waiting."""
    waits: list[float] = []
    monkeypatch.setattr(lmm, "_sleep", waits.append)
    return waits


def client(server: FakeServer, **kwargs: Any) -> LMMClient:
    options: dict[str, Any] = {"api_key_env": KEY_ENV, "backoff_s": 0.01, "timeout_s": 5.0}
    options.update(kwargs)
    return LMMClient(server.base_url, "test-model", **options)


def text_messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def image_messages(tmp_path: Path) -> list[dict[str, Any]]:
    Image.new("RGB", (12, 8), (90, 30, 30)).save(tmp_path / "q.png")
    Image.new("RGB", (8, 8), (30, 90, 30)).save(tmp_path / "d.png")
    demos = [Demonstration(tmp_path / "d.png", "nv")]
    return build_messages(tmp_path / "q.png", demos, labels=["mel", "nv"])


@pytest.mark.parametrize("with_key", [True, False])
def test_normal_reply_and_the_exact_request(
    server: FakeServer,
    image_messages: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    with_key: bool,
) -> None:
    if with_key:
        monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    else:
        monkeypatch.delenv(KEY_ENV, raising=False)
    caplog.set_level(logging.DEBUG)
    reply = client(server, temperature=0.0, max_tokens=16).complete(image_messages)
    assert reply.text == "mel" and reply.raw == completion("mel")
    assert not reply.cached and reply.attempts == 1 and reply.latency_s > 0
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": "test-model",
        "messages": image_messages,
        "temperature": 0.0,
        "max_tokens": 16,
    }
    urls = [
        part["image_url"]["url"]
        for m in request["body"]["messages"]
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] == "image_url"
    ]
    assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    if with_key:
        assert headers["authorization"] == "Bearer sk-secret-123"
    else:
        assert "authorization" not in headers
    assert "sk-secret-123" not in caplog.text


def test_500_then_200_is_retried(server: FakeServer, sleeps: list[float]) -> None:
    server.script.extend([Reply(500, {"error": {"message": "overloaded"}}), Reply()])
    reply = client(server, backoff_s=2.0).complete(text_messages("hi"))
    assert reply.text == "mel" and reply.attempts == 2 and len(server.requests) == 2
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] < 3.0  # backoff_s * jitter in [0.5, 1.5)


def test_backoff_doubles_and_gives_up_after_max_retries(
    server: FakeServer, sleeps: list[float]
) -> None:
    server.default = lambda body: Reply(503, "busy")
    with pytest.raises(LMMError) as err:
        client(server, backoff_s=1.0, max_retries=3).complete(text_messages("hi"))
    assert len(server.requests) == 4 and err.value.attempts == 4 and err.value.status == 503
    assert str(err.value) == f"{server.base_url}/chat/completions answered HTTP 503: busy"
    for i, wait in enumerate(sleeps):  # 1, 2, 4 s, each times a jitter in [0.5, 1.5)
        assert 0.5 * 2**i <= wait < 1.5 * 2**i


def test_429_honours_retry_after(server: FakeServer, sleeps: list[float]) -> None:
    server.script.extend(
        [Reply(429, {"error": "slow down"}, {"Retry-After": "0"}),
         Reply(429, {"error": "slow down"}, {"Retry-After": "7"}),
         Reply()]
    )  # fmt: skip
    reply = client(server, backoff_s=50.0).complete(text_messages("hi"))
    assert reply.text == "mel" and reply.attempts == 3
    assert sleeps == [0.0, 7.0]  # Retry-After, not the 50 s backoff


def test_429_with_real_waits(server: FakeServer) -> None:
    server.script.extend([Reply(429, "", {"Retry-After": "0"}), Reply()])
    reply = client(server).complete(text_messages("hi"))
    assert reply.attempts == 2 and len(server.requests) == 2


def test_400_is_not_retried(server: FakeServer, sleeps: list[float]) -> None:
    message = "messages[1]: image too large " + "x" * 1000
    server.script.append(Reply(400, {"error": {"message": message, "type": "invalid"}}))
    with pytest.raises(LMMError) as err:
        client(server).complete(text_messages("hi"))
    assert err.value.status == 400 and err.value.attempts == 1
    assert len(server.requests) == 1 and sleeps == []
    text = str(err.value)
    assert text.startswith(
        f"{server.base_url}/chat/completions answered HTTP 400: messages[1]: image too large xxx"
    )
    assert text.endswith("...") and len(text) < 400  # the server's message, truncated


def test_timeout_is_retried_then_fails(server: FakeServer) -> None:
    server.default = lambda body: Reply(delay_s=0.6)
    start = time.perf_counter()
    with pytest.raises(LMMError) as err:
        client(server, timeout_s=0.2, max_retries=1).complete(text_messages("hi"))
    assert time.perf_counter() - start < 2.0
    assert err.value.status is None and err.value.attempts == 2 and len(server.requests) == 2
    assert str(err.value) == f"{server.base_url}/chat/completions: no answer within 0.2 s"


def test_connection_refused_is_retried_then_fails(sleeps: list[float]) -> None:
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port now
    bad = LMMClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(LMMError, match="connection failed") as err:
        bad.complete(text_messages("hi"))
    assert err.value.attempts == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<html>gateway</html>", "malformed reply from {url}: not JSON: <html>gateway</html>"),
        ({"object": "chat.completion"}, "malformed reply: no choices[0].message.content in"),
        ({"choices": []}, "malformed reply: no choices[0].message.content in"),
        ({"choices": [{"message": {"content": None}}]},
         "malformed reply: choices[0].message.content is NoneType"),
        ("[1, 2]", "malformed reply from {url}: not a JSON object: [1, 2]"),
    ],
)  # fmt: skip
def test_malformed_replies(server: FakeServer, body: dict[str, Any] | str, problem: str) -> None:
    server.script.append(Reply(200, body))
    with pytest.raises(LMMError) as err:
        client(server).complete(text_messages("hi"))
    assert str(err.value).startswith(problem.format(url=f"{server.base_url}/chat/completions"))
    assert err.value.status == 200 and err.value.attempts == 1 and len(server.requests) == 1


def test_cache_hit_makes_no_second_request(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = client(server, cache_dir=cache).complete(text_messages("hi"))
    key = hashlib.sha256(
        json.dumps(
            {"max_tokens": 16, "messages": text_messages("hi"), "model": "test-model",
             "temperature": 0.0},
            sort_keys=True, separators=(",", ":"),
        ).encode()
    ).hexdigest()  # fmt: skip
    assert cache_key("test-model", text_messages("hi"), 0.0, 16) == key
    assert [p.name for p in cache.iterdir()] == [f"{key}.json"]
    again = client(server, cache_dir=cache).complete(text_messages("hi"))  # a fresh client
    assert len(server.requests) == 1
    assert again.cached and again.attempts == 0 and again.text == first.text == "mel"
    assert again.raw == first.raw
    client(server, cache_dir=cache, max_tokens=17).complete(text_messages("hi"))
    client(server, cache_dir=cache).complete(text_messages("other"))
    assert len(server.requests) == 3  # other settings or messages are other keys


def test_failures_are_not_cached_and_corrupt_entries_are_ignored(
    server: FakeServer, tmp_path: Path
) -> None:
    server.script.append(Reply(400, "bad"))
    with pytest.raises(LMMError):
        client(server, cache_dir=tmp_path).complete(text_messages("hi"))
    assert list(tmp_path.iterdir()) == []
    key = cache_key("test-model", text_messages("hi"), 0.0, 16)
    (tmp_path / f"{key}.json").write_text("{truncated")
    reply = client(server, cache_dir=tmp_path).complete(text_messages("hi"))
    assert not reply.cached and len(server.requests) == 2
    assert json.loads((tmp_path / f"{key}.json").read_text())["text"] == "mel"


def test_complete_many_returns_errors_in_place(server: FakeServer) -> None:
    def answer(body: dict[str, Any]) -> Reply:
        text = body["messages"][0]["content"]
        if text == "fail":
            return Reply(400, {"error": {"message": "bad item"}})
        return Reply(body=completion(text.upper()))

    server.default = answer
    results = client(server, max_concurrency=3).complete_many(
        [text_messages(t) for t in ["a", "b", "fail", "c", "d"]]
    )
    assert [r.text if isinstance(r, LMMReply) else None for r in results] == [
        "A", "B", None, "C", "D"
    ]  # fmt: skip
    error = results[2]
    assert isinstance(error, LMMError) and error.status == 400 and "bad item" in str(error)
    assert client(server).complete_many([]) == []


def test_complete_many_never_exceeds_max_concurrency(server: FakeServer) -> None:
    server.default = lambda body: Reply(delay_s=0.15)
    results = client(server, max_concurrency=2).complete_many(
        [text_messages(str(i)) for i in range(6)]
    )
    assert all(isinstance(r, LMMReply) for r in results) and len(server.requests) == 6
    assert server.max_active == 2  # parallel, but never more than 2 at once


def test_concurrency_bound_holds_across_threads(server: FakeServer) -> None:
    server.default = lambda body: Reply(delay_s=0.1)
    shared = client(server, max_concurrency=1)
    threads = [
        threading.Thread(target=shared.complete, args=(text_messages(str(i)),)) for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 3 and server.max_active == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="base_url must start with http:// or https://"):
        LMMClient("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match="max_concurrency must be > 0, got 0"):
        LMMClient("http://127.0.0.1:1/v1", "m", max_concurrency=0)
    with pytest.raises(ValueError, match="max_retries must be >= 0, got -1"):
        LMMClient("http://127.0.0.1:1/v1", "m", max_retries=-1)
    assert LMMClient("http://h/v1/", "m").url == "http://h/v1/chat/completions"
