"""Logging set up by the CLI follows sys.stderr when it is replaced (captured, redirected)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from medcl.logging_utils import setup_logging


def test_records_go_to_the_current_stderr_not_a_closed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(0)
    first.close()  # e.g. the capture of an earlier test
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("medcl.test").warning("still shown")
    logging.getLogger("medcl.test").info("below the default level")
    assert second.getvalue().endswith("WARNING medcl.test: still shown\n")
    assert "below the default level" not in second.getvalue()


def test_verbosity_levels() -> None:
    setup_logging(1)
    assert logging.getLogger().level == logging.INFO
    setup_logging(2)
    assert logging.getLogger().level == logging.DEBUG
    setup_logging(0)
    assert logging.getLogger().level == logging.WARNING
