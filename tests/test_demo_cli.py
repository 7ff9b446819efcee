"""What ``medcl demo`` prints (issue 15): no claim that an unserved app runs, the exact serve
command, and a plain notice when it ran on synthetic stand-ins.

The pipelines are replaced by stand-ins that record their arguments (the real ones run in
tests/jobs/test_demo_pipelines.py); everything else is the command users run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

import medcl.cli.demo as demo_cli
import medcl.jobs.demo as demo_jobs
from medcl.cli import build_parser, main


@pytest.fixture
def fake_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_demo(cfg: object, *, workspace: Path, data_root: Path | None) -> list[object]:
        return []

    def run_demo_pipelines(cfg: object, **kwargs: Any) -> demo_jobs.DemoSummary:
        calls.append({"cfg": cfg, **kwargs})
        login = demo_jobs.DemoLogin("demo", "pw", "reviewer", True)
        return demo_jobs.DemoSummary(
            kwargs["workspace"], kwargs["data_root"], "sqlite:///x.db", logins=[login]
        )

    def serve_app(*args: object) -> int:
        raise AssertionError("--no-serve must not serve")

    monkeypatch.setattr(demo_jobs, "run_demo", run_demo)
    monkeypatch.setattr(demo_jobs, "run_demo_pipelines", run_demo_pipelines)
    monkeypatch.setattr(demo_cli, "serve_app", serve_app)
    for var in ("MEDCL_DATA", "MEDCL_REVIEW_DB", "MEDCL_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    return calls


def _serve_line(out: str) -> list[str]:
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("review app:"))
    return shlex.split(lines[i + 1])


def test_no_serve_gives_the_exact_command_with_the_data_root(
    tmp_path: Path, fake_pipelines: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    ws, data = tmp_path / "my ws", tmp_path / "data"
    data.mkdir()
    argv = ["demo", "--no-serve", "--workspace", str(ws), "--data-root", str(data)]
    argv += ["--no-quick", "--set", "inspect=[]", "--port", "8600"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "review app: not started (--no-serve); to serve it on http://127.0.0.1:8600 run" in out
    assert "review app: http://" not in out
    command = _serve_line(out)
    assert command == [
        "medcl", "demo", "--workspace", str(ws.resolve()), "--data-root", str(data.resolve()),
        "--no-quick", "--set", "inspect=[]", "--port", "8600",
    ]  # fmt: skip
    assert f"data: {data.resolve()}" in out
    # the printed command, parsed, asks for what this run did (and serves this time)
    again = build_parser().parse_args(command[1:])
    assert not again.no_serve and again.quick is False and again.overrides == ["inspect=[]"]
    assert (again.workspace, again.data_root, again.port) == (ws.resolve(), data.resolve(), 8600)


def test_data_root_from_the_environment_goes_into_the_command(
    tmp_path: Path,
    fake_pipelines: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "shared-data"
    data.mkdir()
    monkeypatch.setenv("MEDCL_DATA", str(data))
    db = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["demo", "--no-serve", "--workspace", str(tmp_path), "--db", db]) == 0
    command = _serve_line(capsys.readouterr().out)
    assert command == [
        "medcl", "demo", "--workspace", str(tmp_path.resolve()), "--data-root", str(data),
        "--db", db,
    ]  # fmt: skip
    assert fake_pipelines[0]["data_root"] == data


def test_synthetic_demo_says_so_in_the_log_and_the_summary(
    tmp_path: Path,
    fake_pipelines: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--no-serve", "--workspace", str(tmp_path)]) == 0  # default: warnings
    out, err = capsys.readouterr()
    synthetic = tmp_path.resolve() / "synthetic"
    assert (
        f"no data root: the demo runs on small synthetic stand-ins written to {synthetic}, not "
        "on real data; point it at real data with --data-root DIR (or MEDCL_DATA=DIR)"
    ) in err
    assert f"data: SYNTHETIC stand-ins in {synthetic} (no --data-root or MEDCL_DATA)" in out
    assert "medcl demo --data-root DIR, or MEDCL_DATA=DIR make demo" in out
    assert _serve_line(out) == ["medcl", "demo", "--workspace", str(tmp_path.resolve())]
    assert fake_pipelines[0]["data_root"] is None
