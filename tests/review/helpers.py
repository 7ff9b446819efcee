"""Plain helpers shared by the review tests."""

from __future__ import annotations

from typing import Any

PASSWORD = "correct horse battery"


def prediction(key: str, kind: str = "retrieval", **extra: Any) -> dict[str, Any]:
    """One predictions line with kind-appropriate artifacts (relative paths)."""
    artifacts = {
        "retrieval": {"query": f"{key}.png", "true_label": None, "demonstrations": []},
        "slide": {"slide": f"{key}.tiff", "top_tiles": [f"tiles/{key}_0.png"]},
        "volume": {"image": f"{key}.nii.gz", "mask": f"{key}_pred.nii.gz"},
    }[kind]
    rec: dict[str, Any] = {
        "case_key": key,
        "kind": kind,
        "model": "m",
        "model_version": "v1",
        "site": "",
        "label": "nv",
        "scores": {"nv": 0.7, "mel": 0.3},
        "artifacts": artifacts,
    }
    rec.update(extra)
    return rec
