"""Fixtures shared by the retrieval tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<hospital>/<class>/*.png: hospital B's images are tinted (a domain shift)."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    colours = {"a": (200, 60, 60), "b": (60, 180, 80), "c": (60, 80, 200)}
    for hospital, tint in (("A", 0), ("B", 40)):
        for cls, colour in colours.items():
            folder = root / "images" / hospital / cls
            folder.mkdir(parents=True)
            for i in range(8):
                noise = rng.integers(-30, 30, size=(40, 40, 3))
                arr = np.clip(np.array(colour)[None, None] + noise + tint, 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(folder / f"{hospital}{cls}{i}.png")
    return root


@pytest.fixture(scope="session")
def pool_data_args() -> list[str]:
    """``--set`` options that read the two-hospital pool (with its domains) at 32 px."""
    options = (
        "data.path=images",
        "data.format=class_folders",
        "data.format_kwargs={domain_level: true}",
        "data.num_workers=0",
        "image_size=32",
    )
    return [arg for opt in options for arg in ("--set", opt)]
