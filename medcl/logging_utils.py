"""Logging set up once, at an entry point (the CLI, a job runner); library code only logs."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger: WARNING by default, INFO with ``-v``, DEBUG with ``-vv``.

    Ranks other than 0 of a distributed run log warnings and errors only.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format=_FORMAT, force=True)
    for noisy in ("PIL", "matplotlib", "urllib3", "h5py"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
