"""``medcl demo`` stops its Streamlit server when it gets SIGTERM or SIGINT (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVE = """
import sys
from pathlib import Path
import medcl.cli.demo as demo
demo.APP = Path(sys.argv[1])
sys.exit(demo.serve_app(Path(sys.argv[2]), None, sys.argv[3], int(sys.argv[4])))
"""


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_server_stops_its_streamlit_child(tmp_path: Path, sig: signal.Signals) -> None:
    app = tmp_path / "app.py"
    app.write_text("import streamlit as st\nst.write('hello')\n")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            str(app),
            str(tmp_path),
            f"sqlite:///{tmp_path}/r.db",
            *[str(port)],
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a signal for the parent only, as `kill PID` sends it
    )
    child = None
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(parent.pid)):
            assert parent.poll() is None, parent.communicate()
            assert time.monotonic() < deadline, "no streamlit child started"
            time.sleep(0.1)
        time.sleep(2.0)  # let streamlit start up properly
        (child,) = children
        assert _alive(child)
        parent.send_signal(sig)
        out, err = parent.communicate(timeout=30)
        assert parent.returncode == 0, err
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"streamlit child {child} still running after {sig.name}"
        assert "serving the review app" in out
    finally:
        for pid in [*_children(parent.pid), *([child] if child else [])]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
