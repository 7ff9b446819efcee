"""Fixtures shared by the retrieval tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<hospital>/<class>/*.png: hospital B's images are tinted (a domain shift)."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    colours = {"a": (200, 60, 60), "b": (60, 180, 80), "c": (60, 80, 200)}
    for hospital, tint in (("A", 0), ("B", 40)):
        for cls, colour in colours.items():
            folder = root / "images" / hospital / cls
            folder.mkdir(parents=True)
            for i in range(8):
                noise = rng.integers(-30, 30, size=(40, 40, 3))
                arr = np.clip(np.array(colour)[None, None] + noise + tint, 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(folder / f"{hospital}{cls}{i}.png")
    return root


@pytest.fixture(scope="session")
def pool_data_args() -> list[str]:
    """``--set`` options that read the two-hospital pool (with its domains) at 32 px."""
    options = (
        "data.path=images",
        "data.format=class_folders",
        "data.format_kwargs={domain_level: true}",
        "data.num_workers=0",
        "image_size=32",
    )
    return [arg for opt in options for arg in ("--set", opt)]


Reply = tuple[int, str]


class Endpoint:
    """A chat-completions server whose reply is ``policy(number of images in the request)``."""

    def __init__(self, policy: Callable[[int], Reply]) -> None:
        self.policy = policy
        self.requests: list[int] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                images = sum(
                    1
                    for m in body["messages"]
                    if isinstance(m["content"], list)
                    for part in m["content"]
                    if part["type"] == "image_url"
                )
                endpoint.requests.append(images)
                status, text = endpoint.policy(images)
                reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                payload = json.dumps(reply if status == 200 else {"error": text}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(lambda n: (200, "a"))
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
