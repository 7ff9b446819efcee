"""What this installation can do: versions, optional backends, database reachability."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass

_COMPONENTS = (
    "torch",
    "monai",
    "timm",
    "open_clip_torch",
    "nibabel",
    "pydicom",
    "openslide-python",
    "openslide-bin",
    "tiffslide",
    "scikit-image",
    "streamlit",
    "sqlalchemy",
)


@dataclass(frozen=True)
class Check:
    """One line of the status report."""

    name: str
    ok: bool
    detail: str


def package_versions() -> list[Check]:
    """Installed version of each component medcl builds on."""
    out = []
    for name in _COMPONENTS:
        try:
            out.append(Check(name, True, md.version(name)))
        except md.PackageNotFoundError:
            out.append(Check(name, False, "not installed"))
    return out


def database_url() -> str:
    """The review store's URL: ``$MEDCL_REVIEW_DB`` or the workspace's SQLite file."""
    from medcl.review.db import default_url

    return default_url()


def check_database(url: str | None = None, timeout_s: float = 3.0) -> Check:
    """Connect to the review database and run ``SELECT 1``; never raises.

    The URL is shown redacted (:func:`medcl.review.db.redact_url`: password and secret query
    parameters hidden), and any secret of it is scrubbed from the error message too.
    """
    from medcl.review.db import redact_url, url_secrets

    url = url or database_url()
    shown = redact_url(url)
    try:
        sqlalchemy = importlib.import_module("sqlalchemy")
        args = {"connect_timeout": int(timeout_s)} if url.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return Check("database", True, shown)
    except Exception as exc:  # noqa: BLE001 - a status page reports any failure
        message = f"{shown}: {type(exc).__name__}: {exc}".splitlines()[0]
        for secret in url_secrets(url):
            message = message.replace(secret, "***")
        return Check("database", False, message)
