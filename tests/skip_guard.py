"""A pytest plugin: browser and PostgreSQL tests never skip silently in CI.

Two kinds of tests need software beyond Python: ``browser`` (marked ``browser``: headless
Chromium) and ``postgres`` (marked ``postgres``; every test whose ``store_url`` fixture runs with
the ``postgres`` parameter, or that uses ``pg_base_url``, gets the mark at collection). When they
skip for want of that software, ``make test`` would still be green with one line in its summary.

* Under CI (``$CI`` set to anything but ``""``, ``0``, ``false`` or ``no``) a skip of such a test is
  reported as a failure (an error when a fixture skipped it) that gives the skip reason and the
  command that installs what is missing, unless ``$MEDCL_ALLOW_SKIP`` names its kind
  (``browser``, ``postgres``, ``all``; comma separated). An opt-out is printed in the header
  and again at the end.
* Outside CI the skips stay skips, and the end of the run says in one warning line how many of
  each kind were skipped.

Loaded by ``tests/conftest.py`` (``pytest_plugins``); ``-p skip_guard`` loads it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping

import pytest
from _pytest.terminal import TerminalReporter

#: kind -> (what it needs, the Debian package)
KINDS: dict[str, tuple[str, str]] = {
    "browser": ("Chromium (/usr/bin/chromium)", "chromium"),
    "postgres": ("PostgreSQL (initdb, or MEDCL_TEST_POSTGRES_URL)", "postgresql"),
}
_PROPERTY = "medcl_skip_guard"
_ENABLED = pytest.StashKey[bool]()
_ALLOWED = pytest.StashKey[frozenset[str]]()


def ci_enabled(env: Mapping[str, str]) -> bool:
    """True when ``env`` says this is a CI run (``CI`` set to a true-ish value)."""
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def allowed_skips(env: Mapping[str, str]) -> frozenset[str]:
    """The kinds ``MEDCL_ALLOW_SKIP`` allows to skip.

    Raises:
        pytest.UsageError: for a name that is not a kind or ``all``.
    """
    names = {n.strip() for n in env.get("MEDCL_ALLOW_SKIP", "").split(",") if n.strip()}
    unknown = sorted(names - set(KINDS) - {"all"})
    if unknown:
        raise pytest.UsageError(
            f"MEDCL_ALLOW_SKIP: unknown name(s) {', '.join(unknown)} "
            f"(valid: {', '.join(KINDS)}, all)"
        )
    return frozenset(KINDS) if "all" in names else frozenset(names)


def install_command(kinds: list[str]) -> str:
    """The one command that installs what ``kinds`` need."""
    return "sudo apt-get install -y " + " ".join(KINDS[k][1] for k in kinds)


def pytest_configure(config: pytest.Config) -> None:
    for kind, (needs, _) in KINDS.items():
        config.addinivalue_line("markers", f"{kind}: needs {needs}; may not skip under CI")
    config.stash[_ENABLED] = ci_enabled(os.environ)
    config.stash[_ALLOWED] = allowed_skips(os.environ)


def pytest_report_header(config: pytest.Config) -> list[str]:
    allowed = sorted(config.stash[_ALLOWED])
    if not config.stash[_ENABLED]:
        return []
    lines = ["skip guard: CI run; a skipped browser or PostgreSQL test fails the run"]
    if allowed:
        lines.append(
            f"!!! MEDCL_ALLOW_SKIP={','.join(allowed)}: these tests MAY SKIP in this CI run "
            "(deliberate opt-out) !!!"
        )
    return lines


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the PostgreSQL variants: ``store_url[postgres]`` and users of ``pg_base_url``."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        fixtures = getattr(item, "fixturenames", ())
        if params.get("store_url") == "postgres" or "pg_base_url" in fixtures:
            item.add_marker(pytest.mark.postgres)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    kinds = [k for k in KINDS if item.get_closest_marker(k) is not None]
    config = item.config
    blocked = [k for k in kinds if k not in config.stash[_ALLOWED]]
    if not blocked or not config.stash[_ENABLED]:
        return report
    needs = " and ".join(KINDS[k][0] for k in blocked)
    report.outcome = "failed"
    report.longrepr = (
        f"{'/'.join(blocked)} test skipped under CI: {_skip_reason(report)}\n"
        f"It needs {needs}. Install with:\n\n    {install_command(blocked)}\n\n"
        f"or allow the skip on purpose with MEDCL_ALLOW_SKIP={','.join(blocked)}."
    )
    report.user_properties.append((_PROPERTY, ",".join(blocked)))
    return report


def _kinds_of(report: pytest.TestReport) -> list[str]:
    return [k for k in KINDS if k in report.keywords]


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    # a skip in a fixture (setup) counts as an error, one in the test body as a failure
    stats = terminalreporter.stats
    failed = [
        r
        for r in [*stats.get("failed", []), *stats.get("error", [])]
        if any(name == _PROPERTY for name, _ in getattr(r, "user_properties", ()))
    ]
    skipped: dict[str, int] = dict.fromkeys(KINDS, 0)
    for report in terminalreporter.stats.get("skipped", []):
        for kind in _kinds_of(report):
            skipped[kind] += 1
    tr = terminalreporter
    if failed:
        kinds = sorted({k for r in failed for k in _kinds_of(r) if k in KINDS})
        tr.write_sep("=", "skip guard", red=True, bold=True)
        tr.write_line(
            f"{len(failed)} browser/PostgreSQL test(s) skipped under CI and were counted as "
            f"failures. Install with: {install_command(kinds or list(KINDS))}",
            red=True,
            bold=True,
        )
    if any(skipped.values()):
        counts = ", ".join(f"{n} {kind}" for kind, n in skipped.items() if n)
        allowed = sorted(config.stash[_ALLOWED])
        why = f" (allowed by MEDCL_ALLOW_SKIP={','.join(allowed)})" if allowed else ""
        tr.write_sep("!", "skip guard", yellow=True, bold=True)
        tr.write_line(
            f"SKIPPED tests that need system packages: {counts}{why}. "
            f"Install with: {install_command([k for k, n in skipped.items() if n])}",
            yellow=True,
            bold=True,
        )
