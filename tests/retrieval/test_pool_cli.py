"""`medcl retrieval index / prompt / predict` on a two-hospital pool."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medcl.cli import main


@pytest.fixture(scope="module")
def index_dir(
    pool: Path, pool_data_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("index")
    args = [
        "retrieval",
        "index",
        "--encoder",
        "timm:resnet18",
        "--data-root",
        str(pool),
        "--out",
        str(out),
        *pool_data_args,
    ]
    assert main(args) == 0
    return out


def test_index_folder_holds_pool_and_fingerprint(index_dir: Path) -> None:
    info = json.loads((index_dir / "index.json").read_text())
    assert info["count"] == 48 and info["kind"] == "exact" and len(info["fingerprint"]) == 16


def test_prompt_selects_nearest_demonstrations(
    pool: Path, index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = pool / "images" / "B" / "a" / "Ba0.png"
    args = [
        "retrieval",
        "prompt",
        str(query),
        "--index",
        str(index_dir),
        "--encoder",
        "timm:resnet18",
        "--image-size",
        "32",
        "-k",
        "3",
        "--group",
        "Ba0",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    episode = json.loads((tmp_path / "episode.json").read_text())
    demos = episode["demonstrations"]
    assert len(demos) == 3
    assert all(Path(d["image_path"]).stem != "Ba0" for d in demos)  # own group excluded
    sims = [d["similarity"] for d in demos]
    assert sims == sorted(sims, reverse=True)
    assert sorted(episode["allowed_answers"]) == ["a", "b", "c"]
    messages = json.loads((tmp_path / "messages.json").read_text())
    assert messages[0]["role"] == "system" and len(messages) == 1 + 2 * 3 + 1
    assert messages[-1]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_index_used_with_another_encoder_is_refused(
    pool: Path, index_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = pool / "images" / "A" / "b" / "Ab1.png"
    args = [
        "retrieval",
        "prompt",
        str(query),
        "--index",
        str(index_dir),
        "--encoder",
        "timm:resnet18",
        "--image-size",
        "48",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "index was built with encoder/pool fingerprint" in err and str(index_dir) in err


@pytest.fixture
def endpoint() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions" and body["model"] == "tiny"
            reply = {"choices": [{"message": {"role": "assistant", "content": "The answer: B."}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_predict_parses_the_endpoint_answer(
    pool: Path, index_dir: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    query = pool / "images" / "B" / "b" / "Bb2.png"
    args = [
        "retrieval",
        "predict",
        str(query),
        "--index",
        str(index_dir),
        "--encoder",
        "timm:resnet18",
        "--image-size",
        "32",
        "-k",
        "2",
        "--base-url",
        endpoint,
        "--model",
        "tiny",
    ]
    assert main(args) == 0
    assert "answer: b" in capsys.readouterr().out
