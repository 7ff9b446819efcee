"""``medcl demo``: the quick end-to-end run on sample data, then the review app on localhost."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from medcl.cli.common import add_config_args, add_workspace_arg, resolve_config
from medcl.errors import MedclError

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
HOST = "127.0.0.1"
DEFAULT_PORT = 8501

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipelines on the sample data in quick mode and serve the review app",
        description=(
            "Preview the sample data, run the volume, slide and retrieval pipelines in quick "
            "mode on it (--data-root or $MEDCL_DATA; synthetic stand-ins when neither is set), "
            "import their predictions into the review store, create the demo logins and serve "
            "the review app on localhost. Re-running skips finished stages."
        ),
    )
    p.add_argument("--data-root", type=Path, default=None, help="real sample-data folder")
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="few training steps (default); --no-quick trains longer on more data",
    )
    p.add_argument("--no-serve", action="store_true", help="stop after the import (no app)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"app port on 127.0.0.1 ({DEFAULT_PORT})"
    )
    p.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="review database URL (default: $MEDCL_REVIEW_DB, else <workspace>/review/review.db)",
    )
    add_config_args(p)
    add_workspace_arg(p)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from medcl.jobs.demo import DemoConfig, run_demo, run_demo_pipelines
    from medcl.workspace import data_root, workspace_root

    cfg = resolve_config(DemoConfig, args, {})
    ws = workspace_root(args.workspace)
    root = data_root(args.data_root)
    if root is None:
        log.warning(
            "no data root: the demo runs on small synthetic stand-ins written to %s, not on real "
            "data; point it at real data with --data-root DIR (or MEDCL_DATA=DIR)",
            ws / "synthetic",
        )
    results = run_demo(cfg, workspace=ws, data_root=root)
    print(f"{'kind':8} {'input':60} preview")
    for res in results:
        print(f"{res.kind:8} {Path(res.summary['path']).name:60} {res.preview}")
    summary = run_demo_pipelines(
        cfg, workspace=ws, data_root=root, quick=args.quick, db_url=args.db
    )
    print(f"\n{'stage':10} {'cases':>5} {'seconds':>8}  predictions")
    for stage in summary.stages:
        took = "skipped" if stage.skipped else f"{stage.seconds:.1f}"
        print(f"{stage.stage:10} {stage.cases:5d} {took:>8}  {stage.predictions}")
    for name, (created, skipped, errors) in summary.imported.items():
        print(f"import {name}: {created} created, {skipped} already there, {len(errors)} errors")
        for err in errors:
            print(f"  {err}")
    print(f"\nworkspace: {ws}")
    print(f"data: {data_note(ws, root)}")
    print(f"review store: {summary.db_url}")
    url = f"http://{HOST}:{args.port}"
    if args.no_serve:
        print(f"review app: not started (--no-serve); to serve it on {url} run")
        print(f"  {serve_command(args, ws, root)}")
    else:
        print(f"review app: {url}")
    for login in summary.logins:
        note = "" if login.created else " (existing account; password as first set)"
        print(f"  login {login.username} / {login.password}  ({login.role}){note}")
    if args.no_serve:
        return 0
    return serve_app(ws, root, args.db or os.environ.get("MEDCL_REVIEW_DB"), args.port)


def data_note(workspace: Path, root: Path | None) -> str:
    """What the demo ran on, for its summary: the data root, or a plain synthetic notice."""
    if root is not None:
        return str(root)
    return (
        f"SYNTHETIC stand-ins in {workspace / 'synthetic'} (no --data-root or MEDCL_DATA); "
        "the cases are made up, not real scans, slides or images. For the real sample data: "
        "medcl demo --data-root DIR, or MEDCL_DATA=DIR make demo"
    )


def serve_command(args: argparse.Namespace, workspace: Path, root: Path | None) -> str:
    """The ``medcl demo`` command that serves what this run built (same workspace, data,
    settings and store; its finished stages are skipped), shell-quoted."""
    cmd = ["medcl", "demo", "--workspace", str(workspace)]
    if root is not None:
        cmd += ["--data-root", str(root)]
    if not args.quick:
        cmd.append("--no-quick")
    if args.config is not None:
        cmd += ["--config", str(Path(args.config).resolve())]
    for override in args.overrides:
        cmd += ["--set", override]
    if args.db:
        cmd += ["--db", args.db]
    if args.port != DEFAULT_PORT:
        cmd += ["--port", str(args.port)]
    return shlex.join(cmd)


def serve_app(workspace: Path, data_root: Path | None, db_url: str | None, port: int) -> int:
    """Run the Streamlit review app on 127.0.0.1:``port`` until interrupted."""
    if not APP.is_file():
        raise MedclError(f"review app not found at {APP} (run from a source checkout)")
    env = dict(os.environ, MEDCL_WORKSPACE=str(workspace))
    env["MEDCL_REVIEW_DB"] = db_url or f"sqlite:///{workspace / 'review' / 'review.db'}"
    if data_root is not None:
        env["MEDCL_DATA"] = str(data_root)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        HOST,
        # also in app/.streamlit/config.toml; repeated so no other config can turn them on
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    print(f"serving the review app on http://{HOST}:{port} (Ctrl-C stops it)", flush=True)
    return run_child(cmd, env)


def run_child(cmd: list[str], env: dict[str, str], *, grace_s: float = 10.0) -> int:
    """Run ``cmd`` until it exits or this process gets SIGTERM or SIGINT; then stop it too.

    The child gets SIGTERM and ``grace_s`` seconds to exit, then SIGKILL, and is always waited
    for, so no server is left behind. Returns the child's exit code, or 0 when stopped by a
    signal (the user asked for it).
    """
    proc = subprocess.Popen(cmd, env=env)
    stopped: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        if proc.poll() is None:
            proc.terminate()

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _stop) for s in handled}
    try:
        while True:
            try:
                code = proc.wait(timeout=grace_s if stopped else None)
                break
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopped else code
