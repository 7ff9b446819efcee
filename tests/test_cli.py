"""The command line: help, dispatch, and user errors without tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from medcl.cli import build_parser, main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "demo"):
        assert command in out


def test_group_without_subcommand_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    assert "inspect" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    proc = subprocess.run(
        [sys.executable, "-m", "medcl", "data", "inspect", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("medcl: error: ")
    assert str(bad) in proc.stderr
    assert "unrecognised file type" in proc.stderr


def test_bad_config_key_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "inspect.yaml"
    cfg.write_text(f"path: {tmp_path}\nmax_sise: 12\n")
    assert main(["data", "inspect", str(tmp_path), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "max_sise" in err and "unknown key" in err


def test_wrong_type_in_set_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(tmp_path), "--set", "max_size=big"]) == 2
    err = capsys.readouterr().err
    assert "--set max_size=big" in err and "max_size" in err


def _all_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _all_parsers(child, (*path, name))
    return out


def test_every_help_text_reads_as_plain_text() -> None:
    # argparse %-formats argument help but not descriptions: a "%%" written for one shows up
    # doubled in the other
    parsers = _all_parsers(build_parser())
    assert len(parsers) > 20
    for path, parser in parsers:
        text = parser.format_help()
        assert "%%" not in text, f"medcl {' '.join(path)} --help shows '%%'"
        assert "%(" not in text, f"medcl {' '.join(path)} --help shows a raw placeholder"
