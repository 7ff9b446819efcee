"""Write GeoJSON files (tissue contours, tile scores) the one way: atomically, compact, UTF-8."""

from __future__ import annotations

import json
import logging
import os
from os import PathLike
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def write_geojson(path: str | PathLike[str], collection: dict[str, Any]) -> Path:
    """Write a GeoJSON object atomically (a temporary file beside it, then a rename).

    Compact separators, UTF-8; NaN or infinite numbers are refused (``ValueError``, nothing
    written) since GeoJSON readers such as QuPath reject them. Parent folders are created; a
    reader never sees a half-written file.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %d GeoJSON features to %s", len(collection.get("features", [])), target)
    return target
