"""What the case page says about a prediction's confidence, as plain values for the page to show.

- :func:`score_rows`: every class probability, highest first, for a small bar chart;
- :func:`predicted_probability`: the probability of the predicted label (None for a volume,
  whose label names several structures);
- :func:`uncertainty_definition`: what the shown "uncertainty" is computed from, from the
  model card when the pipeline said so, else the importer's rule;
- :func:`structure_rows`: the full list of structures a volume prediction names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medcl.review.model_card import ModelCard

DEFAULT_UNCERTAINTY = (
    "as given by the pipeline; when it gives none, the importer uses 1 - the highest class score"
)


def score_rows(scores: Mapping[str, float], label: str | None = None) -> list[dict[str, Any]]:
    """``[{"class", "probability", "predicted"}]`` sorted by probability (highest first, ties by
    class name); ``predicted`` marks ``label``."""
    ordered = sorted(scores.items(), key=lambda kv: (-float(kv[1]), str(kv[0])))
    return [
        {"class": str(k), "probability": float(v), "predicted": str(k) == label} for k, v in ordered
    ]


def predicted_probability(scores: Mapping[str, float], label: str) -> float | None:
    """The score of the predicted ``label``, or None when ``label`` is not one of the classes."""
    value = scores.get(label)
    return None if value is None else float(value)


def uncertainty_definition(card: ModelCard | None) -> str:
    """One sentence for the help text next to the uncertainty: what it is computed from."""
    how = card.uncertainty if card is not None and card.uncertainty else DEFAULT_UNCERTAINTY
    return f"Uncertainty, from 0 (sure) to 1 (unsure): {how}."


def structure_rows(
    label: str, scores: Mapping[str, float], labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every structure a volume prediction names, with its class number and confidence.

    ``label`` is the record's comma-separated list (``"spleen, kidney_right"``); ``labels`` maps
    class numbers to names (``{"1": "spleen"}``); ``scores`` maps names to the model's mean
    confidence. A structure with no number or no score gets None there.

    Returns:
        ``[{"structure", "class", "confidence"}]`` in the order of ``label``.
    """
    number = {}
    for key, name in (labels or {}).items():
        try:
            number[str(name)] = int(key)
        except (TypeError, ValueError):
            continue
    names = [part.strip() for part in label.split(",") if part.strip()]
    return [
        {
            "structure": name,
            "class": number.get(name),
            "confidence": None if scores.get(name) is None else float(scores[name]),
        }
        for name in names
    ]
