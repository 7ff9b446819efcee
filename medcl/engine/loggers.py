"""Metric loggers: a CSV file always, TensorBoard when it is installed.

Both are resumable: opened with ``resume_step=S`` they first drop whatever was logged after step
``S`` (rows a killed run wrote after its last checkpoint), so a resumed run's log has each step
once and one header.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Row = Mapping[str, float | int | str]


class CSVLogger:
    """Append rows of metrics to a CSV file; the header grows when a row brings new keys.

    Args:
        path: the CSV file (created with its folder).
        resume_step: keep existing rows with ``step <= resume_step`` and drop later ones (and any
            half-written line); ``None`` or 0 starts an empty file.
    """

    def __init__(self, path: str | os.PathLike[str], resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fields: list[str] = []
        rows: list[dict[str, str]] = []
        if resume_step and self.path.is_file():
            rows = self._read_until(resume_step)
        self._rewrite(rows)

    def _read_until(self, resume_step: int) -> list[dict[str, str]]:
        kept: list[dict[str, str]] = []
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            self.fields = list(reader.fieldnames or [])
            for row in reader:
                # A kill can leave a half-written last line: missing fields or an unparsable step.
                if None in row or any(v is None for v in row.values()):
                    continue
                try:
                    step = int(float(row.get("step", "")))
                except ValueError:
                    continue
                if step <= resume_step:
                    kept.append(row)
        return kept

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            if self.fields:
                writer = csv.DictWriter(fh, fieldnames=self.fields, restval="")
                writer.writeheader()
                writer.writerows(rows)
        tmp.replace(self.path)

    def log(self, row: Row) -> None:
        """Append one row (flushed at once)."""
        values = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in values if k not in self.fields]
        if new:
            rows = self._read_all() if self.fields else []
            self.fields.extend(new)
            self._rewrite(rows)
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, restval="")
            if fh.tell() == 0:
                writer.writeheader()
            writer.writerow(values)

    def _read_all(self) -> list[dict[str, str]]:
        with self.path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    def close(self) -> None:
        """Nothing to release (every row is written and closed at once)."""


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package is importable."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger:
    """Scalars to TensorBoard event files under ``log_dir``.

    Args:
        log_dir: folder for the event files.
        resume_step: events after this step are hidden by TensorBoard (``purge_step``).
    """

    def __init__(self, log_dir: str | os.PathLike[str], resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step or None)

    def log(self, row: Row) -> None:
        """Write every numeric value of ``row`` as a scalar at ``row['step']``."""
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


class MetricLoggers:
    """The CSV logger plus TensorBoard if wanted and installed, behind one ``log``."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        resume_step: int | None = None,
        tensorboard: bool = True,
        csv_name: str = "metrics.csv",
    ) -> None:
        out = Path(out_dir)
        self.loggers: list[CSVLogger | TensorBoardLogger] = [CSVLogger(out / csv_name, resume_step)]
        if tensorboard and tensorboard_available():
            self.loggers.append(TensorBoardLogger(out / "tensorboard", resume_step))
        elif tensorboard:
            logger.info("tensorboard is not installed; logging to %s only", csv_name)

    def log(self, row: Row) -> None:
        """Send ``row`` to every logger."""
        for item in self.loggers:
            item.log(row)

    def close(self) -> None:
        """Close every logger."""
        for item in self.loggers:
            item.close()


def as_row(values: Mapping[str, Any]) -> dict[str, float | int | str]:
    """Convert tensors and numpy scalars to Python numbers for logging."""
    out: dict[str, float | int | str] = {}
    for key, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = value if isinstance(value, int | float | str) else str(value)
    return out
