"""``medcl`` command line: argument parsing only; every command calls a library function.

Each command group lives in its own module with an ``add_parser(subparsers)`` function; the
parsed namespace carries ``func`` (the handler) which returns an exit code. User errors
(:class:`~medcl.errors.MedclError`) are printed on one line without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medcl import __version__
from medcl.cli import data as data_cmd
from medcl.cli import demo as demo_cmd
from medcl.cli import evaluate as eval_cmd
from medcl.cli import mil as mil_cmd
from medcl.cli import pretrain as pretrain_cmd
from medcl.cli import retrieval as retrieval_cmd
from medcl.cli import review as review_cmd
from medcl.cli import shift as shift_cmd
from medcl.cli import wsi as wsi_cmd
from medcl.errors import MedclError
from medcl.logging_utils import setup_logging

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The full ``medcl`` parser with every command group."""
    parser = argparse.ArgumentParser(
        prog="medcl",
        description=(
            "Contrastive adaptation of medical-imaging models across hospitals, scanners and "
            "stains: data inspection, pretraining, retrieval, MIL and review."
        ),
    )
    parser.add_argument("--version", action="version", version=f"medcl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_cmd.add_parser(sub)
    pretrain_cmd.add_parser(sub)
    retrieval_cmd.add_parser(sub)
    wsi_cmd.add_parser(sub)
    mil_cmd.add_parser(sub)
    review_cmd.add_parser(sub)
    shift_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    return parser


# Commands that never run torch: they must start light, so torch is not imported for them.
LIGHT_COMMANDS = frozenset({"data", "review", "wsi tile"})


def _uses_torch(args: argparse.Namespace) -> bool:
    command = str(args.command)
    sub = getattr(args, f"{command}_command", None)
    return command not in LIGHT_COMMANDS and f"{command} {sub}" not in LIGHT_COMMANDS


def _flush_denormals() -> None:
    """Denormal floats in trained weights slow CPU inference 10-20x; treat them as zero.

    Only for commands that run torch: importing it costs about 2 CPU s and 650 MB.
    """
    import torch

    torch.set_flush_denormal(True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medcl`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is not None and _uses_torch(args):
        _flush_denormals()
    if func is None:
        # a group given without its sub-command prints that group's help
        target = getattr(args, "group_parser", parser)
        target.print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args))
    except MedclError as exc:
        print(f"medcl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medcl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
