"""scripts/ensure-system-deps.sh: what `make test` and CI check before the tests run.

The script looks for its files under ``$MEDCL_SYSTEM_DEPS_ROOT`` (here a temporary folder, so
Chromium and PostgreSQL can be absent or present whatever this machine has) and is told never
to run apt-get, so nothing is installed by these tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-system-deps.sh"


def run(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MEDCL_")}
    keep["PATH"] = "/usr/bin:/bin"  # no initdb on PATH unless the test puts one there
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={
            **keep,
            "MEDCL_SYSTEM_DEPS_ROOT": str(root),
            "MEDCL_SYSTEM_DEPS_INSTALL": "never",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def test_nothing_installed_stops_with_the_one_command(empty_root: Path) -> None:
    proc = run(empty_root)
    assert proc.returncode == 1
    assert "missing chromium postgresql for the tests" in proc.stderr
    assert "\n    sudo apt-get install -y chromium postgresql\n" in proc.stderr
    assert "MEDCL_ALLOW_SKIP=browser,postgres make test" in proc.stderr


def test_only_what_is_missing_is_named(empty_root: Path) -> None:
    fake_file(empty_root / "usr" / "lib" / "postgresql" / "16" / "bin" / "initdb")
    proc = run(empty_root, MEDCL_TEST_POSTGRES_URL="postgresql+psycopg://u@/db")
    assert proc.returncode == 1
    assert "\n    sudo apt-get install -y chromium\n" in proc.stderr

    fake_file(empty_root / "usr" / "bin" / "chromium")
    proc = run(empty_root, MEDCL_TEST_POSTGRES_URL="postgresql+psycopg://u@/db")
    assert proc.returncode == 0, proc.stderr
    assert "Chromium: " in proc.stdout
    assert "PostgreSQL: the server given by MEDCL_TEST_POSTGRES_URL" in proc.stdout


def test_initdb_on_path_counts(empty_root: Path, tmp_path: Path) -> None:
    fake_file(empty_root / "usr" / "bin" / "chromium")
    bindir = fake_file(tmp_path / "pg" / "bin" / "initdb").parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    if os.geteuid() == 0:
        has_user = subprocess.run(["id", "postgres"], capture_output=True).returncode == 0
        if not has_user:  # as root the script also wants the postgres user
            proc = run(empty_root, **env)
            assert proc.returncode == 1 and "no 'postgres' user" in proc.stderr
            return
    proc = run(empty_root, **env)
    assert proc.returncode == 0, proc.stderr
    assert "PostgreSQL: initdb found" in proc.stdout


def test_opt_out_is_loud_and_per_kind(empty_root: Path) -> None:
    proc = run(empty_root, MEDCL_ALLOW_SKIP="browser,postgres")
    assert proc.returncode == 0, proc.stderr
    assert "!!! MEDCL_ALLOW_SKIP: Chromium is not installed and the browser tests WILL BE" in (
        proc.stdout
    )
    assert "PostgreSQL is not installed and the PostgreSQL variants" in proc.stdout

    proc = run(empty_root, MEDCL_ALLOW_SKIP="browser")
    assert proc.returncode == 1
    assert "\n    sudo apt-get install -y postgresql\n" in proc.stderr

    assert run(empty_root, MEDCL_ALLOW_SKIP="all").returncode == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MEDCL_ALLOW_SKIP": "chrome"},
            "MEDCL_ALLOW_SKIP: unknown name 'chrome' (valid: browser, postgres, all)",
        ),
        (
            {"MEDCL_SYSTEM_DEPS_INSTALL": "maybe"},
            "MEDCL_SYSTEM_DEPS_INSTALL must be auto or never, got 'maybe'",
        ),
    ],
)
def test_bad_settings_are_one_line(empty_root: Path, env: dict[str, str], message: str) -> None:
    proc = run(empty_root, **env)
    assert proc.returncode == 2
    assert proc.stderr == f"system deps: {message}\n"
