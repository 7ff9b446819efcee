"""Numbers for README tables: means with 95% intervals over seeds, and the README writer.

Every evaluation (volume, patch, retrieval, MIL) writes its README section through
:func:`update_readme`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medcl.errors import InvalidInputError


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean; ``low = high = mean`` for one value.

    Non-finite values are dropped; all ``nan`` when none is left.
    """
    arr = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, mean - half, mean + half


def mean_interval(values: Sequence[float], digits: int = 3) -> str:
    """``"0.712 [0.690, 0.734] (n=3)"``, or ``"n/a"`` without values."""
    mean, low, high = t_interval(values)
    if math.isnan(mean):
        return "n/a"
    n = sum(math.isfinite(v) for v in values)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={n})"


def paired_interval(differences: Sequence[float], digits: int = 3) -> str:
    """Like :func:`mean_interval` for paired differences, signed, marking intervals above 0."""
    mean, low, high = t_interval(differences)
    if math.isnan(mean):
        return "n/a"
    n = sum(math.isfinite(v) for v in differences)
    mark = " above 0" if low > 0 else (" below 0" if high < 0 else "")
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] (n={n}){mark}"


def mean_half_width(
    values: np.ndarray | Sequence[float], level: float = 0.95
) -> tuple[float, float]:
    """Mean and the half-width of its Student-t interval (``nan`` half-width for one value).

    Unlike :func:`t_interval`, non-finite values are kept (a ``nan`` run gives a ``nan`` mean).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


def check_readme(readme: Path, markers: tuple[str, str]) -> None:
    """Fail before any work when ``readme`` cannot take the table: missing, or without ``markers``.

    Raises:
        InvalidInputError: naming the file and what is wrong with it.
    """
    if not readme.is_file():
        raise InvalidInputError(readme, "no such file to write the results table into (--readme)")
    text = readme.read_text(encoding="utf-8")
    missing = [m for m in markers if m not in text]
    if missing:
        raise InvalidInputError(readme, f"markers not found: {' / '.join(missing)} (--readme)")


def update_readme(readme: Path, table: str, note: str, markers: tuple[str, str]) -> None:
    """Replace the text between the README's ``markers`` with ``note`` and ``table``."""
    begin, finish = markers
    text = readme.read_text(encoding="utf-8")
    if begin not in text or finish not in text:
        raise ValueError(f"{readme}: markers {begin} / {finish} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(finish, 1)
    readme.write_text(f"{head}{begin}\n{note}\n\n{table}{finish}{tail}", encoding="utf-8")
