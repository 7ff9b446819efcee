"""Logging set up once, at an entry point (the CLI, a job runner); library code only logs."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler(sys.stderr)`` keeps the stream of the moment it was made; when
    ``sys.stderr`` is later replaced (a captured or redirected stream that is then closed), later
    records would go to the stale stream or fail.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger: WARNING by default, INFO with ``-v``, DEBUG with ``-vv``.

    Ranks other than 0 of a distributed run log warnings and errors only.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format=_FORMAT, handlers=[CurrentStderrHandler()], force=True)
    for noisy in ("PIL", "matplotlib", "urllib3", "h5py"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
