"""Argument helpers shared by the command modules: config files, overrides, workspace."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

# yaml, pydantic and medcl.config are imported by the functions that use them, so that
# ``medcl --help`` and the parsers stay light (they cost ~0.15 CPU s at start otherwise)
C = TypeVar("C", bound="BaseModel")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set key=value``."""
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, value parsed as YAML); repeatable",
    )


def add_evaluation_args(parser: argparse.ArgumentParser, markers: str) -> None:
    """What every ``eval`` command takes: ``--data-root``, ``--readme`` (the table goes between
    the ``markers`` comments), ``--out``, ``--config``/``--set`` and ``--workspace``."""
    parser.add_argument("--data-root", type=Path, default=None, help="folder relative paths use")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help=f"write the table into this README between the {markers} markers",
    )
    parser.add_argument("--out", dest="out_dir", type=Path, default=None, help="output folder")
    add_config_args(parser)
    add_workspace_arg(parser)


def add_workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace folder (default: $MEDCL_WORKSPACE or ./medcl-workspace)",
    )


def resolve_config(cls: type[C], args: argparse.Namespace, flags: Mapping[str, Any]) -> C:
    """Defaults < ``--config`` file < ``--set`` overrides < explicit flags (those not ``None``)."""
    from medcl.config import load_config

    values = {key: v for key, v in flags.items() if v is not None}
    return load_config(cls, args.config, args.overrides, values)


def resolved_data_root(args: argparse.Namespace) -> Path | None:
    """``--data-root`` (or ``$MEDCL_DATA``) resolved and checked by
    :func:`medcl.workspace.data_root`, the one place every command resolves its data root."""
    from medcl.workspace import data_root

    return data_root(getattr(args, "data_root", None))


def print_summary(summary: Mapping[str, Any]) -> None:
    """Print a nested summary as readable YAML."""
    import yaml

    print(yaml.safe_dump(dict(summary), sort_keys=False, default_flow_style=None, width=100))


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0 (only that process prints results)."""
    return os.environ.get("RANK", "0") == "0"
