"""Errors of a viewer shown as one line (no traceback, no server paths), the page going on.

Used around each case viewer, also inside ``st.fragment`` bodies (a fragment shows an uncaught
exception with its traceback itself, before the caller could catch it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from medcl.errors import MedclError
from medcl.review.safe_text import plain

logger = logging.getLogger("medcl.app")
VIEWER_FAILED = "Cannot show this case's images: the viewer failed (details in the server log)."
# an absolute path: '/' then folders; only its last part (the file name) is shown to reviewers
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/,;:()'\"]+/)*([^\s/,;:()'\"]+)")


def without_paths(message: str) -> str:
    """``message`` with every absolute path shortened to its file name (no server layout)."""
    return _ABS_PATH.sub(r"\1", message)


@contextmanager
def one_line_errors(case_id: int) -> Iterator[None]:
    """Show a :class:`MedclError` as its message, anything else as a fixed line (logged in full).

    Streamlit's own control flow (``st.stop``, ``st.rerun``) derives from ``BaseException`` and
    passes through.
    """
    try:
        yield
    except MedclError as exc:  # a missing or refused artifact, bad artifact metadata
        logger.info("case %d: %s", case_id, exc)  # the full message, paths included
        st.error(f"Cannot show this case's images: {plain(without_paths(str(exc)))}")
    except Exception:  # one line here, the traceback only in the server log
        logger.exception("case %d: the viewer failed", case_id)
        st.error(VIEWER_FAILED)
