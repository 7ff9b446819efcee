"""Fixtures of the app tests: a seeded store the app finds by env."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_seed import Seeded, seed


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    """A seeded store; the app finds it through MEDCL_REVIEW_DB / MEDCL_WORKSPACE."""
    data = seed(tmp_path)
    monkeypatch.setenv("MEDCL_REVIEW_DB", data.url)
    monkeypatch.setenv("MEDCL_WORKSPACE", str(tmp_path))
    return data
