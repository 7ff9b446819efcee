"""`medcl eval patch-ssl`: finished runs are reused only with the settings they were made with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.eval.patch_ssl import PatchSSLEvalConfig, run_patch_ssl_eval


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ssl")
    rng = np.random.default_rng(0)
    for cls, colour in {"red": (200, 60, 60), "blue": (60, 80, 200)}.items():
        (root / cls).mkdir()
        for i in range(12):
            arr = np.clip(np.array(colour)[None, None] + rng.integers(-40, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


@pytest.mark.slow
def test_rerun_reuses_and_changed_pretraining_is_refused(images: Path, tmp_path: Path) -> None:
    data = {"path": str(images), "format": "class_folders", "test_size": 0.25, "num_workers": 0}
    train = {"max_steps": 1, "device": "cpu", "progress": False, "tensorboard": False}
    cfg = PatchSSLEvalConfig.model_validate(
        {
            "seeds": [0],
            "out_dir": str(tmp_path / "eval"),
            "pretrain": {"data": data, "image_size": 32, "batch_size": 8, "train": train,
                         "projection_hidden": 32, "projection_dim": 16},
            "probe": {"data": data, "image_size": 32, "k": 3},
        }
    )  # fmt: skip
    rows, _ = run_patch_ssl_eval(cfg)
    stamp = tmp_path / "eval" / "simclr_seed0" / "probe.json"
    mtime = stamp.stat().st_mtime_ns
    again, _ = run_patch_ssl_eval(cfg.model_copy(update={"probe": cfg.probe.model_copy()}))
    assert again == rows and stamp.stat().st_mtime_ns == mtime  # reused, not recomputed
    workers = cfg.model_copy(deep=True)
    workers.pretrain.data.num_workers = 1  # how fast it runs is not a setting of the result
    assert run_patch_ssl_eval(workers)[0] == rows
    longer = cfg.model_copy(deep=True)
    longer.pretrain.train.max_steps = 3
    with pytest.raises(InvalidInputError) as err:
        run_patch_ssl_eval(longer)
    assert "simclr_seed0: holds outputs made with other settings (pretrain.train.max_steps: 1 " in (
        str(err.value)
    )
