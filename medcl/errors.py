"""Exception types shown to users.

Every error a user can cause (a bad file, a bad config, a bad option) is a :class:`MedclError`.
The CLI prints its message on one line and exits non-zero, without a traceback; library callers
catch it by type. Messages always name the file (or key) and the problem.
"""

from __future__ import annotations

from os import PathLike


class MedclError(Exception):
    """Base class of every error medcl reports to a user."""

    exit_code: int = 2


class InvalidInputError(MedclError):
    """A file or folder given to medcl cannot be used.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, in words a user understands.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(MedclError):
    """A configuration file or override is malformed (unknown key, wrong type, bad YAML)."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: key '{key}'" if key else source
        super().__init__(f"{where}: {problem}")


class AlignmentError(InvalidInputError):
    """An image and its label map do not describe the same voxel grid."""
