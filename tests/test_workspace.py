from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import InvalidInputError, MedclError
from medcl.workspace import data_root, resolve_inside, settings_name, slug, workspace_root


def test_resolve_inside_accepts_relative_and_refuses_escape(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert resolve_inside(tmp_path, "a/b.png") == (tmp_path / "a" / "b.png").resolve()
    with pytest.raises(InvalidInputError, match="outside the allowed folder"):
        resolve_inside(tmp_path, "../etc/passwd")
    with pytest.raises(InvalidInputError, match="outside the allowed folder"):
        resolve_inside(tmp_path, "/etc/passwd")


def test_resolve_inside_refuses_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="outside"):
        resolve_inside(root, "link/file.txt")


def test_settings_name_and_slug() -> None:
    settings = {"mag": 20, "px": 256, "overlap": 0, "skip": None}
    assert settings_name(settings) == "mag20_px256_overlap0"
    assert settings_name({"mpp": 0.50}) == "mpp0.5"
    assert slug("a b/c:d") == "a_b_c_d"
    assert slug("../..") == "item"


def test_roots_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCL_WORKSPACE", str(tmp_path / "ws"))
    assert workspace_root() == (tmp_path / "ws").resolve()
    monkeypatch.delenv("MEDCL_DATA", raising=False)
    assert data_root() is None
    with pytest.raises(MedclError, match="--data-root"):
        data_root(required=True)
    with pytest.raises(InvalidInputError, match="not a folder"):
        data_root(tmp_path / "missing")
