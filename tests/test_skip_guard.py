"""The skip guard (tests/skip_guard.py): under CI a skipped browser or PostgreSQL test fails.

Each case runs pytest in a subprocess on a tiny test file with the plugin loaded by ``-p``, in an
empty folder (no project config), and reads the outcome counts from its summary line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:xdist")
PROJECT_FILES = ("tests/app/test_browser.py", "tests/review/test_db.py")

TINY = """
import pytest

@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    if request.param == "postgres":
        pytest.skip("PostgreSQL binaries not found")
    return "sqlite://"

@pytest.mark.browser
def test_browser():
    pytest.skip("/usr/bin/chromium not installed")

def test_store(store_url):
    assert store_url == "sqlite://"

def test_unrelated_skip():
    pytest.skip("needs real data")

@pytest.mark.browser
@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
"""


def run_tiny(tmp_path: Path, **env: str) -> tuple[int, dict[str, int], str]:
    """(exit code, outcome counts, output) of pytest on TINY with ``env`` added."""
    (tmp_path / "test_tiny.py").write_text(TINY)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "MEDCL_ALLOW_SKIP")}
    base["PYTHONPATH"] = os.pathsep.join([str(TESTS), base.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [*PYTEST, "-p", "skip_guard", "-p", "no:cacheprovider", "-rA", "test_tiny.py"],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    return proc.returncode, counts, out


def test_outside_ci_skips_stay_skips_and_are_counted(tmp_path: Path) -> None:
    code, counts, out = run_tiny(tmp_path)
    assert code == 0, out
    assert counts == {"passed": 1, "skipped": 3, "xfailed": 1}
    assert "SKIPPED tests that need system packages: 1 browser, 1 postgres." in out
    assert "sudo apt-get install -y chromium postgresql" in out


def test_under_ci_browser_and_postgres_skips_fail(tmp_path: Path) -> None:
    code, counts, out = run_tiny(tmp_path, CI="true")
    assert code == 1, out
    # the unrelated skip stays a skip and the xfail stays an xfail; a skip in a fixture fails
    # its setup, which pytest counts as an error
    assert counts == {"failed": 1, "error": 1, "passed": 1, "skipped": 1, "xfailed": 1}
    assert "FAILED test_tiny.py::test_browser" in out
    assert "ERROR test_tiny.py::test_store[postgres]" in out
    assert "browser test skipped under CI: /usr/bin/chromium not installed" in out
    assert "postgres test skipped under CI: PostgreSQL binaries not found" in out
    assert "    sudo apt-get install -y chromium\n" in out
    assert "    sudo apt-get install -y postgresql\n" in out
    assert "2 browser/PostgreSQL test(s) skipped under CI and were counted as failures" in out
    assert "skip guard: CI run" in out


def test_opt_out_is_per_kind_and_loud(tmp_path: Path) -> None:
    code, counts, out = run_tiny(tmp_path, CI="1", MEDCL_ALLOW_SKIP="browser")
    assert code == 1, out
    assert counts == {"error": 1, "passed": 1, "skipped": 2, "xfailed": 1}
    assert "ERROR test_tiny.py::test_store[postgres]" in out
    assert "!!! MEDCL_ALLOW_SKIP=browser: these tests MAY SKIP in this CI run" in out

    code, counts, out = run_tiny(tmp_path, CI="1", MEDCL_ALLOW_SKIP="browser, postgres")
    assert code == 0, out
    assert counts == {"passed": 1, "skipped": 3, "xfailed": 1}
    assert "(allowed by MEDCL_ALLOW_SKIP=browser,postgres)" in out


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_ci_values_that_mean_no(tmp_path: Path, value: str) -> None:
    code, counts, out = run_tiny(tmp_path, CI=value)
    assert code == 0 and "failed" not in counts and "error" not in counts, out


def test_unknown_opt_out_name_is_a_usage_error(tmp_path: Path) -> None:
    code, _, out = run_tiny(tmp_path, CI="1", MEDCL_ALLOW_SKIP="browsr")
    assert code == 4, out
    assert "MEDCL_ALLOW_SKIP: unknown name(s) browsr (valid: browser, postgres, all)" in out


def test_project_tests_carry_the_marks() -> None:
    """The real browser tests and PostgreSQL variants are the ones the guard sees."""
    proc = subprocess.run(
        [*PYTEST, "--collect-only", "-q", "-m", "postgres or browser", *PROJECT_FILES],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(i.startswith("tests/app/test_browser.py::") for i in ids)
    db = [i for i in ids if i.startswith("tests/review/test_db.py::")]
    assert db and all("[postgres" in i for i in db), db
