"""Settings stamps: a finished stage is reused only with the settings it was made with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcl.engine.stamps import check_stamp, output_settings, settings_digest
from medcl.errors import InvalidInputError


def test_digest_is_order_free_and_json_normal() -> None:
    a = settings_digest({"size": (32, 32), "encoder": "x", "path": Path("/d")})
    assert a == settings_digest({"path": "/d", "encoder": "x", "size": [32, 32]})
    assert len(a) == 8 and a != settings_digest({"path": "/d", "encoder": "y", "size": [32, 32]})


def test_output_settings_drop_runtime_keys_only() -> None:
    cfg = {"loss": "ntxent", "data": {"path": "a", "num_workers": 4}, "train": {"device": "cpu"}}
    assert output_settings(cfg) == {"loss": "ntxent", "data": {"path": "a"}, "train": {}}


def test_stamp_written_then_checked(tmp_path: Path) -> None:
    settings = {"encoder": "offline:x", "weights_sha256": "ab", "image_size": 96}
    check_stamp(tmp_path, settings, has_outputs=False)
    assert json.loads((tmp_path / "settings.json").read_text()) == settings
    check_stamp(tmp_path, dict(settings), has_outputs=True)  # the same settings: reused
    with pytest.raises(InvalidInputError) as err:
        check_stamp(
            tmp_path, {**settings, "image_size": 128, "weights_sha256": "cd"}, has_outputs=True
        )
    assert str(err.value) == (
        f"{tmp_path}: holds outputs made with other settings (image_size: 96 stored, 128 now; "
        "weights_sha256: 'ab' stored, 'cd' now); move or delete it, or use another name, to run "
        "with these settings"
    )


def test_outputs_without_a_stamp_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"holds outputs but no settings\.json"):
        check_stamp(tmp_path, {"a": 1}, has_outputs=True)
    assert not (tmp_path / "settings.json").exists()
