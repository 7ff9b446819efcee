"""The model card a prediction record carries: who the model is for people, and what it is for.

A pipeline adds an optional ``model_card`` object to each line of ``predictions.jsonl``::

    "model_card": {
        "display_name": "Toy attention-MIL slide classifier (demo)",
        "trained_on": "2 slides split into 24 toy bags (demo data)",
        "intended_use": "Shows the review workflow; not validated on any patient cohort.",
        "research_only": true,
        "uncertainty": "1 - the probability of the predicted class"   # optional
    }

:func:`parse_model_card` checks it (unknown keys, empty or over-long texts and a non-boolean
``research_only`` are refused, so a typo never hides the research notice);
:func:`attach_model_card` stores the checked card in the prediction's artifacts under
:data:`ARTIFACT_KEY`, which is where :func:`card_of` reads it back. Records without a card
import as before and show :data:`NO_CARD`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

ARTIFACT_KEY = "model_card"
MAX_NAME = 120
MAX_TEXT = 1000
RESEARCH_NOTICE = (
    "Research / demonstration model: not for clinical use. Its outputs must not guide the "
    "diagnosis or treatment of a patient."
)
NO_CARD = "No model card: the pipeline did not say what this model was trained on or is for."
_TEXTS = ("display_name", "trained_on", "intended_use")
_OPTIONAL_TEXTS = ("uncertainty",)
_KEYS = (*_TEXTS, "research_only", *_OPTIONAL_TEXTS)


@dataclass(frozen=True)
class ModelCard:
    """What a reviewer needs to know about the model behind a prediction.

    Attributes:
        display_name: the model's name for people, e.g. ``"Toy attention-MIL classifier"``.
        trained_on: the data it was trained on, in words.
        intended_use: what it is meant (and not meant) for.
        research_only: True for research / demonstration models (the app shows
            :data:`RESEARCH_NOTICE`).
        uncertainty: how the record's ``uncertainty`` is computed ("" when not said).
    """

    display_name: str
    trained_on: str
    intended_use: str
    research_only: bool
    uncertainty: str = ""

    def to_json(self) -> dict[str, Any]:
        """The card as the JSON object :func:`parse_model_card` reads (empty texts left out)."""
        return {k: v for k, v in asdict(self).items() if v != ""}


def _text(obj: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"model_card.{key} must be a non-empty string")
    limit = MAX_NAME if key == "display_name" else MAX_TEXT
    if len(value) > limit:
        raise ValueError(f"model_card.{key} is longer than {limit} characters")
    return value.strip()


def parse_model_card(obj: Any) -> ModelCard:
    """Check a ``model_card`` JSON object and return it as a :class:`ModelCard`.

    Raises:
        ValueError: not an object, an unknown key, a missing or empty text, a text over
            :data:`MAX_NAME` / :data:`MAX_TEXT` characters, or ``research_only`` not a boolean.
    """
    if not isinstance(obj, Mapping):
        raise ValueError("'model_card' must be an object")
    unknown = sorted(str(k) for k in obj if k not in _KEYS)
    if unknown:
        raise ValueError(
            f"model_card has unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
        )
    research = obj.get("research_only")
    if not isinstance(research, bool):
        raise ValueError("model_card.research_only must be true or false")
    texts = {k: _text(obj, k, required=True) for k in _TEXTS}
    extra = {k: _text(obj, k, required=False) for k in _OPTIONAL_TEXTS}
    return ModelCard(research_only=research, **texts, **extra)


def attach_model_card(artifacts: dict[str, Any], card: Any) -> dict[str, Any]:
    """``artifacts`` with the checked ``card`` (a record's ``model_card``, or None) added.

    Raises:
        ValueError: the card is invalid (see :func:`parse_model_card`), or the artifacts already
            hold a ``model_card`` (it belongs at the top level of the record, where it is checked).
    """
    if ARTIFACT_KEY in artifacts:
        raise ValueError("artifacts.model_card is reserved: put the card at the record's top level")
    if card is None:
        return artifacts
    return {**artifacts, ARTIFACT_KEY: parse_model_card(card).to_json()}


def card_of(artifacts: Mapping[str, Any] | None) -> ModelCard | None:
    """The card stored with a prediction (see :func:`attach_model_card`), None without one.

    A stored card that no longer parses (edited in the database) counts as no card.
    """
    raw = (artifacts or {}).get(ARTIFACT_KEY)
    if raw is None:
        return None
    try:
        return parse_model_card(raw)
    except ValueError:
        return None


def display_name(model: str, model_version: str, card: ModelCard | None) -> str:
    """The model's name for people: the card's ``display_name``, else ``"<model> <version>"``."""
    if card is not None:
        return card.display_name
    return f"{model} {model_version}".strip()
