"""`medcl retrieval index / prompt / predict` on a two-hospital pool."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medcl.cli import main
from medcl.errors import InvalidInputError


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


@pytest.mark.parametrize(
    ("mode", "size", "problem"),
    [
        ("L", (40, 40), "query has 1 channel (mode L) but the pool holds RGB colour images"),
        ("RGB", (40, 12), "query is 40x12 px; its shorter side must be at least 32 px"),
    ],
)
def test_query_of_wrong_channels_or_size_is_refused(
    index_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    size: tuple[int, int],
    problem: str,
) -> None:
    from PIL import Image

    query = tmp_path / f"query_{mode}.png"
    Image.new(mode, size, 120).save(query)
    args = ["retrieval", "prompt", str(query), "--index", str(index_dir)]
    assert main([*args, "--encoder", "timm:resnet18", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(query) in err and problem in err


def test_rgba_and_palette_queries_are_converted(
    pool: Path, index_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    rgb = Image.open(pool / "images" / "B" / "a" / "Ba1.png").convert("RGB")
    for mode in ("RGBA", "P"):
        query = tmp_path / f"q_{mode}.png"
        rgb.convert(mode).save(query)
        args = ["retrieval", "prompt", str(query), "--index", str(index_dir), "-k", "2"]
        args += ["--encoder", "timm:resnet18", "--image-size", "32", "--out", str(tmp_path / mode)]
        assert main(args) == 0
        episode = json.loads((tmp_path / mode / "episode.json").read_text())
        assert len(episode["demonstrations"]) == 2


def test_pool_class_missing_from_the_class_map_is_refused(
    pool: Path, pool_data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["retrieval", "index", "--encoder", "timm:resnet18", "--data-root", str(pool)]
    args += ["--out", str(tmp_path / "ix"), *pool_data_args, "--set", "data.classes=[a, b]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "labels not in the class map data.classes: c" in err and str(pool / "images") in err
    assert not (tmp_path / "ix" / "index.json").exists()
    # dropping the unmapped class is the explicit way out
    assert main([*args, "--set", "data.drop_unmapped=true"]) == 0
    info = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert info["count"] == 32


def test_index_refused_once_its_pool_changed(
    pool: Path, pool_data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from medcl.retrieval.pool import load_encoder, open_pool_index

    data = tmp_path / "data"
    shutil.copytree(pool / "images", data / "images")
    out = tmp_path / "index"
    common = ["--encoder", "timm:resnet18", "--data-root", str(data), "--out", str(out)]
    assert main(["retrieval", "index", *common, *pool_data_args]) == 0
    query = data / "images" / "A" / "a" / "Aa1.png"
    prompt = ["retrieval", "prompt", str(query), "--index", str(out), "--encoder"]
    prompt += ["timm:resnet18", "--image-size", "32", "-k", "2"]
    assert main(prompt) == 0
    capsys.readouterr()
    shutil.copy(query, data / "images" / "B" / "a" / "new.png")  # the pool grew since indexing
    assert main(prompt) == 2
    err = capsys.readouterr().err
    assert f"{out}: index was built with encoder/pool fingerprint" in err
    (data / "images" / "B" / "a" / "new.png").unlink()
    assert main(prompt) == 0
    # a caller's own pool list is compared, never the index's metadata with itself
    encoder = load_encoder("timm:resnet18", 32)
    index = open_pool_index(out, encoder, "timm:resnet18")
    paths = index.metadata["path"].tolist()
    assert len(open_pool_index(out, encoder, "timm:resnet18", paths[::-1])) == 48  # order-free
    with pytest.raises(InvalidInputError, match="index was built with encoder/pool fingerprint"):
        open_pool_index(out, encoder, "timm:resnet18", paths[:-1])
