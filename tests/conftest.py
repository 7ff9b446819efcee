"""Shared fixtures: the real-data root and offline settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# browser and PostgreSQL tests may not skip silently under CI (see tests/skip_guard.py)
pytest_plugins = ("skip_guard",)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def _data_root() -> Path | None:
    value = os.environ.get("MEDCL_DATA")
    if not value:
        return None
    root = Path(value)
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Root of the real sample data (``$MEDCL_DATA``); skips the test with a reason when absent."""
    root = _data_root()
    if root is None:
        pytest.skip(
            "real sample data not available: set MEDCL_DATA to the shared data folder "
            "(.ci/run sets it to ../shared/data when that folder exists)"
        )
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _data_root() is not None:
        return
    reason = "MEDCL_DATA is not set or not a folder: real-data test skipped"
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Restore ``sys.modules['__main__']`` after each test.

    Streamlit's AppTest runs page scripts as ``__main__``; a later test that spawns processes
    (``torch.multiprocessing.spawn``) would make its children re-run that script as their main
    module, so a distributed test could fail depending on the order tests ran in.
    """
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
