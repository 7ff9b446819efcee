"""Reviewed retrieval cases become demonstrations: ``medcl retrieval index --add-reviewed``.

Accepted and corrected retrieval cases (:func:`medcl.review.feedback.reviewed_cases`, final label
= the corrected label or the accepted prediction) are embedded with the index's own encoder (the
``encoder`` and ``image_size`` of the index's saved ``config.yaml``, the images read as the pool's
are) and appended through :meth:`DemoIndex.add`, which keeps the fingerprint true over the paths
the index holds. Each added vector's metadata carries its provenance: ``source`` ``review``,
``case_key``, ``review_id``, ``reviewer``, ``reviewed_at`` (UTC) and ``decision``.

The additions are also listed in ``reviewed.csv`` beside the index (:data:`REVIEWED_FILE`); the
pool an index is checked against (:func:`medcl.retrieval.pool.current_pool_paths`) is the image
set re-listed from the data plus the files of this list that still exist, so an opened index is
still refused when its pool changed. A case already listed is not added again (a later review of
it is logged: rebuild the index to apply it); a query image already in the pool is skipped.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medcl.config import RESOLVED_CONFIG_NAME, load_config
from medcl.errors import InvalidInputError, MedclError
from medcl.eval.features import extract_features
from medcl.io.images import read_image
from medcl.retrieval.pool import (
    PROVENANCE_COLUMNS,
    REVIEWED_COLUMNS,
    REVIEWED_FILE,
    PoolIndexConfig,
    load_encoder,
    open_pool_index,
    read_reviewed,
)
from medcl.review.auth import UserInfo, require_admin
from medcl.review.db import Store, add_audit
from medcl.review.exports import skip_row
from medcl.review.feedback import ReviewedCase, reviewed_cases
from medcl.review.service import resolve_artifact

log = logging.getLogger(__name__)


@dataclass
class AddReviewedResult:
    """What ``--add-reviewed`` did: cases added, left out (with why), fingerprints."""

    added: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    fingerprint_before: str = ""
    fingerprint_after: str = ""
    count: int = 0


def _write_reviewed(folder: Path, rows: list[dict[str, str]]) -> Path:
    tmp = Path(folder) / (REVIEWED_FILE + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=REVIEWED_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in REVIEWED_COLUMNS} for r in rows)
    return tmp


def _row(case: ReviewedCase, path: Path) -> dict[str, str]:
    return {
        "path": str(path),
        "label": case.label,
        "domain": case.site or "reviewed",
        "group": case.case_key,
        "case_key": case.case_key,
        "review_id": str(case.review_id),
        "reviewer": case.reviewer,
        "reviewed_at": case.reviewed_at.isoformat(timespec="seconds"),
        "decision": case.decision,
    }


def _embed(encoder: Any, paths: list[Path], batch_size: int) -> np.ndarray:
    """``(N, D)`` embeddings of ``paths``, read and transformed as the pool's images are."""
    batches = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        x = torch.stack([encoder.eval_transform(read_image(p)) for p in chunk])
        batches.append((x, np.zeros(len(chunk), np.int64)))
    return extract_features(encoder, batches, progress=False)[0]


def add_reviewed_to_index(
    folder: Path,
    store: Store,
    admin: UserInfo,
    *,
    model: str | None = None,
) -> AddReviewedResult:
    """Add the accepted / corrected retrieval cases of ``store`` to the index in ``folder``.

    ``model`` restricts the cases to one prediction model. Admins only (the CLI acts as the
    ``system`` admin); audited 'add_reviewed' with the index folder, the cases added and both
    fingerprints.

    Raises:
        InvalidInputError: ``folder`` is not an index made by ``medcl retrieval index``, or its
            encoder or pool no longer match it.
    """
    require_admin(admin)
    folder = Path(folder)
    config = folder / RESOLVED_CONFIG_NAME
    if not config.is_file():
        raise InvalidInputError(folder, f"no {RESOLVED_CONFIG_NAME}: not made by retrieval index")
    cfg = load_config(PoolIndexConfig, config)
    encoder = load_encoder(cfg.encoder, cfg.image_size)
    index = open_pool_index(folder, encoder, cfg.encoder)
    result = AddReviewedResult(fingerprint_before=index.fingerprint)
    listed = read_reviewed(folder)
    done = {r["case_key"]: r for r in listed}
    in_pool = set(index.metadata["path"].astype(str))
    new: list[tuple[ReviewedCase, Path]] = []
    for case in reviewed_cases(store, admin, "retrieval", model=model, skipped=result.skipped):
        if case.case_key in done:
            if done[case.case_key]["review_id"] != str(case.review_id):
                log.warning(
                    "case %s: reviewed again (%s) since it was added; rebuild the index to apply",
                    case.case_key,
                    case.label,
                )
            continue
        try:
            path = resolve_artifact(store, str(case.artifacts.get("query") or ""))
        except MedclError as exc:
            skip_row(result.skipped, case.case_key, case.review_id, f"query image: {exc}")
            continue
        if str(path) in in_pool:
            skip_row(result.skipped, case.case_key, case.review_id, "query image already in pool")
            continue
        in_pool.add(str(path))
        new.append((case, path))
    if new:
        rows = [_row(case, path) for case, path in new]
        emb = _embed(encoder, [p for _, p in new], cfg.batch_size)
        meta = pd.DataFrame(rows).assign(source="review")
        tmp = _write_reviewed(folder, [*listed, *rows])
        index.add(emb, meta)
        # pool rows have no provenance: empty strings keep the columns one type on disk
        index.metadata = index.metadata.fillna({c: "" for c in PROVENANCE_COLUMNS})
        index.save(folder)
        tmp.replace(folder / REVIEWED_FILE)
        result.added = [case.case_key for case, _ in new]
    result.fingerprint_after, result.count = index.fingerprint, len(index)
    with store.session(write=True) as session:
        add_audit(
            session,
            "add_reviewed",
            user_id=admin.id,
            username=admin.username,
            detail={
                "index": str(folder),
                "added": result.added,
                "skipped": result.skipped,
                "fingerprint_before": result.fingerprint_before,
                "fingerprint_after": result.fingerprint_after,
            },
        )
    log.info(
        "index %s: %d reviewed case(s) added, %d left out, fingerprint %s -> %s",
        folder,
        len(result.added),
        len(result.skipped),
        result.fingerprint_before,
        result.fingerprint_after,
    )
    return result
