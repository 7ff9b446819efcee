"""Model cards on prediction records: validation, storage at import, display names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medcl.review import model_card as mc
from medcl.review.confidence import (
    predicted_probability,
    score_rows,
    structure_rows,
    uncertainty_definition,
)
from medcl.review.importer import parse_record
from medcl.review.predictions import PredictionRecord, check_record

CARD = {
    "display_name": "Toy ABMIL slide classifier (demo)",
    "trained_on": "32 toy bags from 2 demo slides",
    "intended_use": "Shows the review workflow.",
    "research_only": True,
}


def _record(**extra: Any) -> dict[str, Any]:
    return {
        "case_key": "slide:a",
        "kind": "slide",
        "model": "abmil",
        "model_version": "demo-1",
        "label": "positive",
        "scores": {"positive": 0.8, "negative": 0.2},
        "artifacts": {"slide": "a.svs"},
        **extra,
    }


def test_parse_model_card_accepts_a_full_card() -> None:
    card = mc.parse_model_card({**CARD, "uncertainty": " 1 - p(predicted) "})
    assert card == mc.ModelCard(
        display_name="Toy ABMIL slide classifier (demo)",
        trained_on="32 toy bags from 2 demo slides",
        intended_use="Shows the review workflow.",
        research_only=True,
        uncertainty="1 - p(predicted)",
    )
    assert mc.parse_model_card(card.to_json()) == card
    assert "uncertainty" not in mc.parse_model_card(CARD).to_json()  # empty texts left out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"research_only": "yes"}, "model_card.research_only must be true or false"),
        ({"research_only": None}, "model_card.research_only must be true or false"),
        ({"display_name": "  "}, "model_card.display_name must be a non-empty string"),
        ({"trained_on": 3}, "model_card.trained_on must be a non-empty string"),
        ({"display_name": "x" * 121}, "model_card.display_name is longer than 120 characters"),
        ({"intended_use": "x" * 1001}, "model_card.intended_use is longer than 1000 characters"),
        ({"reserch_only": False}, "model_card has unknown key(s) reserch_only"),
    ],
)
def test_parse_model_card_refuses_bad_cards(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mc.parse_model_card({**CARD, **change})


def test_parse_model_card_needs_every_text_and_an_object() -> None:
    for key in ("display_name", "trained_on", "intended_use"):
        with pytest.raises(ValueError, match=f"model_card.{key} must be a non-empty string"):
            mc.parse_model_card({k: v for k, v in CARD.items() if k != key})
    with pytest.raises(ValueError, match="'model_card' must be an object"):
        mc.parse_model_card(["not", "a", "card"])


def test_importer_stores_the_checked_card_and_old_records_still_import(tmp_path: Path) -> None:
    rec = parse_record(_record(model_card=CARD), tmp_path)
    assert rec["artifacts"]["model_card"] == CARD
    assert mc.card_of(rec["artifacts"]) == mc.parse_model_card(CARD)
    old = parse_record(_record(), tmp_path)  # no card: imports as before
    assert "model_card" not in old["artifacts"] and mc.card_of(old["artifacts"]) is None
    with pytest.raises(ValueError, match=r"model_card\.research_only must be true or false"):
        parse_record(_record(model_card={**CARD, "research_only": 1}), tmp_path)
    with pytest.raises(ValueError, match=r"artifacts\.model_card is reserved"):
        parse_record(_record(artifacts={"slide": "a.svs", "model_card": CARD}), tmp_path)


def test_prediction_record_writes_the_card(tmp_path: Path) -> None:
    record = PredictionRecord(
        case_key="slide:a",
        kind="slide",
        model="abmil",
        model_version="demo-1",
        label="positive",
        scores={"positive": 0.8},
        artifacts={"slide": "a.svs"},
        model_card=CARD,
    )
    assert json.loads(json.dumps(record.to_json()))["model_card"] == CARD
    assert check_record(record, tmp_path)["artifacts"]["model_card"] == CARD
    bad = PredictionRecord(**{**record.__dict__, "model_card": {**CARD, "research_only": "no"}})
    with pytest.raises(ValueError, match=r"slide:a: model_card\.research_only must be true"):
        check_record(bad, tmp_path)


def test_card_of_and_display_name() -> None:
    assert mc.card_of({"model_card": {**CARD, "research_only": "edited"}}) is None
    assert mc.card_of(None) is None
    card = mc.parse_model_card(CARD)
    assert mc.display_name("abmil", "demo-1", card) == "Toy ABMIL slide classifier (demo)"
    assert (
        mc.display_name("knn-timm_resnet18", "topk-k5-aa7ac5b1", None)
        == "knn-timm_resnet18 topk-k5-aa7ac5b1"
    )


def test_confidence_rows_and_uncertainty_definition() -> None:
    rows = score_rows({"nv": 0.4, "mel": 0.4, "bkl": 0.2}, "nv")
    assert rows == [  # highest first, a tie ordered by name
        {"class": "mel", "probability": 0.4, "predicted": False},
        {"class": "nv", "probability": 0.4, "predicted": True},
        {"class": "bkl", "probability": 0.2, "predicted": False},
    ]
    assert predicted_probability({"a": 0.7, "b": 0.3}, "a") == 0.7
    assert predicted_probability({"spleen": 0.9}, "spleen, liver") is None
    card = mc.parse_model_card({**CARD, "uncertainty": "1 - the vote share of the label"})
    assert uncertainty_definition(card) == (
        "Uncertainty, from 0 (sure) to 1 (unsure): 1 - the vote share of the label."
    )
    assert "1 - the highest class score" in uncertainty_definition(None)
    assert "1 - the highest class score" in uncertainty_definition(mc.parse_model_card(CARD))


def test_structure_rows_list_every_structure() -> None:
    rows = structure_rows(
        "spleen, kidney_right, kidney_left, liver",
        {"spleen": 0.9, "kidney_right": 0.8, "kidney_left": 0.7},
        {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver", "x": "bad"},
    )
    assert [r["structure"] for r in rows] == ["spleen", "kidney_right", "kidney_left", "liver"]
    assert [r["class"] for r in rows] == [1, 2, 3, 5]
    assert [r["confidence"] for r in rows] == [0.9, 0.8, 0.7, None]
