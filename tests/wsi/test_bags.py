"""Bag files of every layout medcl reads, and the errors for broken ones."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medcl.errors import InvalidInputError
from medcl.wsi.bags import list_bag_files, read_bag_file

FEATS = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
COORDS = np.array([[0, 0], [256, 0], [0, 256], [256, 256]], dtype=np.int64)


def h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


def test_medcl_layout_keeps_coords_and_attrs(tmp_path: Path) -> None:
    path = tmp_path / "ours.h5"
    with h5py.File(path, "w") as f:
        f["features"] = FEATS
        f["coords"] = COORDS
        f["coords"].attrs.update({"patch_size": 256, "patch_level": 0})
        f.attrs.update({"encoder": "timm:resnet18", "embed_dim": 3, "complete": True})
    bag = read_bag_file(path)
    np.testing.assert_array_equal(bag.features, FEATS)
    np.testing.assert_array_equal(bag.coords, COORDS)
    assert bag.features.dtype == np.float32 and bag.coords is not None
    assert bag.coords.dtype == np.int64 and len(bag) == 4
    assert bag.attrs == {
        "patch_size": 256,
        "patch_level": 0,
        "encoder": "timm:resnet18",
        "embed_dim": 3,
        "complete": True,
    }


def test_clam_trident_and_mopadi_h5(tmp_path: Path) -> None:
    clam = read_bag_file(h5(tmp_path / "clam.h5", features=FEATS[None], coords=COORDS))
    np.testing.assert_array_equal(clam.features, FEATS)  # (1, N, D) batch axis dropped
    mopadi = read_bag_file(h5(tmp_path / "mopadi.h5", feats=FEATS.astype(np.float64)))
    assert mopadi.coords is None and mopadi.features.dtype == np.float32
    np.testing.assert_allclose(mopadi.features, FEATS)
    empty = read_bag_file(h5(tmp_path / "e.h5", features=np.zeros((0, 3)), coords=np.zeros(0)))
    assert empty.features.shape == (0, 3) and empty.coords is not None
    assert empty.coords.shape == (0, 2)


def test_clam_pt_tensor_and_dict(tmp_path: Path) -> None:
    torch.save(torch.from_numpy(FEATS), tmp_path / "a.pt")
    np.testing.assert_array_equal(read_bag_file(tmp_path / "a.pt").features, FEATS)
    torch.save(
        {"feats": torch.from_numpy(FEATS), "coords": torch.from_numpy(COORDS)}, tmp_path / "b.pt"
    )
    bag = read_bag_file(tmp_path / "b.pt")
    np.testing.assert_array_equal(bag.coords, COORDS)


BROKEN: dict[str, dict[str, np.ndarray]] = {
    "no feature dataset ('features' or 'feats'); the file holds metadata": {
        "metadata": np.zeros(3)
    },
    "4 feature rows but 3 coords; the file is inconsistent": {
        "features": FEATS,
        "coords": COORDS[:3],
    },
    "features contain NaN or infinite values (2 rows)": {
        "features": np.where(FEATS > 1, np.nan, FEATS)
    },
    "features must be (N, D), got shape (3,)": {"features": FEATS[0]},
}


@pytest.mark.parametrize("message", sorted(BROKEN))
def test_broken_bags_raise_one_clear_error(tmp_path: Path, message: str) -> None:
    path = h5(tmp_path / "bad.h5", **BROKEN[message])
    with pytest.raises(InvalidInputError) as err:
        read_bag_file(path)
    assert str(err.value) == f"{path}: {message}"


def test_a_text_file_is_not_a_bag(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("plain text")
    with pytest.raises(InvalidInputError) as err:
        read_bag_file(path)
    assert str(err.value) == f"{path}: not an HDF5 file (expected a features .h5 or a .pt bag)"


def test_unfinished_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "half.h5"
    with h5py.File(path, "w") as f:
        f["features"] = FEATS
        f.attrs["complete"] = False
    with pytest.raises(InvalidInputError, match="unfinished features file"):
        read_bag_file(path)
    (tmp_path / "x.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InvalidInputError, match=r"cannot load the \.pt file"):
        read_bag_file(tmp_path / "x.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "y.pt")
    with pytest.raises(InvalidInputError, match=r"no feature tensor .* holds weights$"):
        read_bag_file(tmp_path / "y.pt")
    with pytest.raises(InvalidInputError, match="bag file not found"):
        read_bag_file(tmp_path / "missing.h5")


def test_list_bag_files_skips_partial_and_other_files(tmp_path: Path) -> None:
    for name in ("b.h5", "a.pt", "c.partial.h5", "notes.txt", "config.yaml"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.h5").write_bytes(b"")
    assert [p.name for p in list_bag_files(tmp_path)] == ["a.pt", "b.h5"]
    assert [p.name for p in list_bag_files(tmp_path, recursive=True)] == ["a.pt", "b.h5", "d.h5"]
    with pytest.raises(InvalidInputError, match="not a folder of bag files"):
        list_bag_files(tmp_path / "b.h5")


@pytest.mark.realdata
def test_mopadi_bags_load(data_root: Path) -> None:
    folder = data_root / "slides" / "mopadi"
    files = list_bag_files(folder, recursive=True)
    assert [p.parent.name for p in files] == ["TCGA-3X-AAVA-01Z-00-DX1", "TCGA-AD-6964-01Z-00-DX1"]
    chol, crc = (read_bag_file(p) for p in files)
    # cholangiocarcinoma: `features` (180, 512) and tile names, no coords
    assert chol.features.shape == (180, 512) and chol.coords is None
    # colorectal MSI-H: `feats` (777, 512) with level-0 coords on a 512 px grid
    assert crc.features.shape == (777, 512) and crc.coords is not None
    assert crc.coords.shape == (777, 2) and crc.coords[0].tolist() == [10240, 21504]
    assert (crc.coords % 512 == 0).all()
    for bag in (chol, crc):
        assert bag.features.dtype == np.float32 and np.isfinite(bag.features).all()
