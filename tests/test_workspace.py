from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import InvalidInputError, MedclError
from medcl.workspace import (
    data_path,
    data_root,
    resolve_inside,
    settings_name,
    slug,
    workspace_root,
)


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


def test_data_path_reads_relative_paths_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert data_path(Path("images"), tmp_path) == tmp_path / "images"
    assert data_path(tmp_path / "images", Path("/elsewhere")) == tmp_path / "images"
    assert data_path("images", None, must_exist=False) == Path("images")
    assert data_path("missing", tmp_path, must_exist=False) == tmp_path / "missing"
    with pytest.raises(InvalidInputError) as err:
        data_path("missing", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'missing'}: no such file or folder "
        f"(relative paths are read under the data root {tmp_path})"
    )
    with pytest.raises(InvalidInputError, match="pass --data-root or set MEDCL_DATA"):
        data_path(tmp_path / "nothing" / "here", None)


def _commands_with_data_root() -> list[list[str]]:
    import argparse

    from medcl.cli import build_parser

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
        if any("--data-root" in a.option_strings for a in parser._actions):
            found.append(prefix)

    walk(build_parser(), [])
    return found


def test_every_command_refuses_a_missing_data_root_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medcl.cli import main

    commands = _commands_with_data_root()
    # the evaluations, the trainings, retrieval, shift and the demo all take --data-root
    assert {"eval probe", "retrieval eval", "pretrain patch", "shift report", "demo"} <= {
        " ".join(c) for c in commands
    }
    monkeypatch.delenv("MEDCL_DATA", raising=False)
    missing = tmp_path / "no-such-data"
    for command in commands:
        code = main([*command, "--data-root", str(missing), "--workspace", str(tmp_path / "ws")])
        err = capsys.readouterr().err
        assert code == 2, command
        assert f"{missing}: data root is not a folder" in err, (command, err)
    # $MEDCL_DATA goes through the same check
    monkeypatch.setenv("MEDCL_DATA", str(missing))
    assert main(["eval", "probe", "--workspace", str(tmp_path / "ws")]) == 2
    assert "data root is not a folder" in capsys.readouterr().err
