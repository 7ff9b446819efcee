"""Write ``predictions.jsonl`` files for the review store (the format of
:mod:`medcl.review.importer`).

Pipelines build one :class:`PredictionRecord` per case and call :func:`write_predictions`, which
checks every record with the importer's own parser before writing anything (a record the store
would refuse fails here, at the pipeline, naming the case) and replaces the file atomically, so a
reader never sees half a file. :func:`artifact_ref` writes artifact paths relative to the file's
folder when they lie under it (the folder can then move) and absolute otherwise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from medcl.errors import InvalidInputError

Kind = Literal["volume", "slide", "retrieval"]


@dataclass(frozen=True)
class PredictionRecord:
    """One line of ``predictions.jsonl``.

    Attributes:
        case_key: stable unique id of the case, e.g. ``"slide:cmu-1-small-region"``.
        kind: ``"volume"``, ``"slide"`` or ``"retrieval"``.
        model: the model's name, e.g. ``"abmil"``.
        model_version: its version (a re-trained model gets a new one), e.g. ``"demo-1a2b3c4d"``.
        label: the predicted label.
        scores: ``{label: probability}``.
        artifacts: kind-specific files and values (see the importer's docstring).
        site: hospital / domain, ``""`` when unknown.
        uncertainty: in [0, 1]; ``None`` lets the importer use ``1 - max(scores)``.
        created: ISO time, or ``None`` (import time).
        model_card: the model's card (:mod:`medcl.review.model_card`), or ``None``.
    """

    case_key: str
    kind: Kind
    model: str
    model_version: str
    label: str
    scores: Mapping[str, float]
    artifacts: Mapping[str, Any]
    site: str = ""
    uncertainty: float | None = None
    created: str | None = None
    model_card: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (``None`` fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["scores"] = {str(k): float(v) for k, v in self.scores.items()}
        if self.model_card is not None:
            out["model_card"] = dict(self.model_card)
        return out


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` for NaN / infinity (JSON has no NaN)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def artifact_ref(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` when inside it, else absolute (as a POSIX string)."""
    target = Path(os.path.normpath(Path(path).absolute()))
    base = Path(os.path.normpath(Path(folder).absolute()))
    try:
        return target.relative_to(base).as_posix()
    except ValueError:
        return target.as_posix()


def check_record(record: PredictionRecord, base: Path) -> dict[str, Any]:
    """The normalised record as the importer would store it.

    Raises:
        ValueError: ``"<case_key>: <problem>"`` when the importer would refuse the record.
    """
    from medcl.review.importer import parse_record

    try:
        return parse_record(json.loads(json.dumps(record.to_json(), allow_nan=False)), base)
    except ValueError as exc:
        raise ValueError(f"{record.case_key}: {exc}") from None


def write_predictions(path: str | os.PathLike[str], records: Iterable[PredictionRecord]) -> Path:
    """Check ``records`` and write them to ``path`` as JSON lines (temp file, then rename).

    Raises:
        ValueError: a record the importer would refuse (nothing is written), or two records with
            the same ``(case_key, model, model_version)``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = list(records)
    seen: set[tuple[str, str, str]] = set()
    for rec in rows:
        check_record(rec, target.parent.absolute())
        key = (rec.case_key, rec.model, rec.model_version)
        if key in seen:
            raise ValueError(f"{rec.case_key}: listed twice for {rec.model} {rec.model_version}")
        seen.add(key)
    text = "".join(json.dumps(r.to_json(), allow_nan=False) + "\n" for r in rows)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def read_predictions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a predictions file, in order (blank lines skipped).

    Raises:
        InvalidInputError: missing file or a line that is not JSON (naming the line).
    """
    src = Path(path)
    if not src.is_file():
        raise InvalidInputError(src, "predictions file not found")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(src, f"line {number} is not JSON ({exc.msg})") from None
    return out


#: A predicted label that reports a tie in a vote (``"tie: a / b"``) starts with this; it names
#: no class (see :func:`medcl.retrieval.vote.majority_vote`).
TIE_PREFIX = "tie: "


def is_tie_label(label: str | None) -> bool:
    """Whether ``label`` reports a tie in a vote (``"tie: a / b"``), not a class."""
    return bool(label) and str(label).startswith(TIE_PREFIX)


def vote_scores(labels: Sequence[str]) -> dict[str, float]:
    """Vote shares of ``labels`` (``["a", "b", "a"]`` -> ``{"a": 2/3, "b": 1/3}``), by first
    appearance; empty input gives ``{}``."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    total = len(labels)
    return {k: v / total for k, v in counts.items()}
