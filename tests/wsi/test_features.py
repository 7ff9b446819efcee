"""Tile dataset and resumable feature extraction on a tiny lossless synthetic slide."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medcl.errors import InvalidInputError
from medcl.models.encoders import Encoder, create_encoder
from medcl.testing.slides import synthetic_tissue_image, write_pyramidal_tiff
from medcl.wsi.coords_io import read_coords
from medcl.wsi.features import extract_features, grid_attrs, partial_path, read_tile_grid
from medcl.wsi.tile_dataset import TileDataset

SIDE = 256
TILE = 64  # the tiny ViT's input size


def write_coords(
    path: Path, coords: npt.ArrayLike, patch_size: int, level: int = 0, read_size: int | None = None
) -> Path:
    """A coords HDF5 as the contract lays it out (written by hand, not by medcl)."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        ds.attrs.update({"patch_size": patch_size, "patch_level": level, "slide": "s.tif"})
        if read_size is not None:
            ds.attrs["read_size"] = read_size
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_tissue_image(SIDE, SIDE, seed=3)[0]


@pytest.fixture(scope="module")
def slide(image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    return write_pyramidal_tiff(path, image, levels=2, tile=128, compression="zlib")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return create_encoder("open_clip:medcl-tiny-vit").eval()


@pytest.fixture()
def grid(tmp_path: Path) -> tuple[np.ndarray, Path]:
    coords = np.array([[x, y] for y in range(0, SIDE, TILE) for x in range(0, SIDE, TILE)])
    coords = coords[:14]  # 14 tiles: batches of 4 leave a last batch of 2
    return coords, write_coords(tmp_path / "s.h5", coords, TILE)


def reference(image: np.ndarray, coords: np.ndarray, encoder: Encoder) -> np.ndarray:
    """Features computed by hand: crop the level-0 array, transform, one forward."""
    tiles = [image[y : y + TILE, x : x + TILE] for x, y in coords]
    with torch.inference_mode():
        batch = torch.stack([encoder.eval_transform(t) for t in tiles])
        return encoder(batch).numpy()


def test_tiles_are_the_slide_pixels_at_level0(slide: Path, image: np.ndarray) -> None:
    coords = np.array([[0, 0], [64, 128], [192, 192]])
    ds = TileDataset(slide, coords, level=0, read_size=64, patch_size=64, transform=torch.tensor)
    assert len(ds) == 3
    for i, (x, y) in enumerate(coords):
        np.testing.assert_array_equal(ds.read_tile(i), image[y : y + 64, x : x + 64])
    tensor, index = ds[1]
    assert index == 1
    np.testing.assert_array_equal(tensor.numpy(), image[128:192, 64:128])


def test_lower_level_tiles_are_read_then_resized(slide: Path, image: np.ndarray) -> None:
    # level 1 = 2x2 block mean of level 0; a 32 px read there covers 64 level-0 px
    ds = TileDataset(slide, [[64, 0]], level=1, read_size=32, patch_size=48, transform=torch.tensor)
    block = image[0:64, 64:128].astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    level1 = np.rint(block).astype(np.uint8)
    expected = np.asarray(Image.fromarray(level1).resize((48, 48), Image.Resampling.LANCZOS))
    tile = ds.read_tile(0)
    assert tile.shape == (48, 48, 3)
    np.testing.assert_array_equal(tile, expected)


def test_dataset_pickles_and_reads_in_worker_processes(slide: Path, encoder: Encoder) -> None:
    coords = np.array([[x, 0] for x in range(0, SIDE, TILE)] + [[0, 64], [64, 64]])
    ds = TileDataset(
        slide, coords, level=0, read_size=TILE, patch_size=TILE, transform=encoder.eval_transform
    )
    ds.read_tile(0)  # opens a handle in this process; pickling must drop it
    assert pickle.loads(pickle.dumps(ds))._slide is None
    serial = [(t, i) for t, i in DataLoader(ds, batch_size=3)]
    parallel = [(t, i) for t, i in DataLoader(ds, batch_size=3, num_workers=2)]
    assert [i.tolist() for _, i in parallel] == [[0, 1, 2], [3, 4, 5]]
    for (a, _), (b, _) in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ds.close()


def test_features_equal_a_plain_forward(
    slide: Path, image: np.ndarray, encoder: Encoder, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    coords, coords_path = grid
    out = tmp_path / "features_x" / "s.h5"
    res = extract_features(slide, coords_path, out, encoder, batch_size=4)
    assert res.complete and res.out_path == out and res.n_tiles == res.n_new == 14
    assert not partial_path(out).exists()
    with h5py.File(out, "r") as f:
        feats, xy = f["features"][()], f["coords"][()]
        assert f["features"].dtype == np.float32 and xy.dtype == np.int64
        assert f.attrs["complete"] and f.attrs["encoder"] == "open_clip:medcl-tiny-vit"
        assert f.attrs["embed_dim"] == 32 and f.attrs["n_done"] == 14
        assert f["coords"].attrs["patch_size"] == TILE and f["coords"].attrs["slide"] == "s.tif"
    np.testing.assert_array_equal(xy, coords)
    np.testing.assert_allclose(feats, reference(image, coords, encoder), atol=1e-5)


def test_interrupted_run_resumes_to_the_same_features(
    slide: Path, encoder: Encoder, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    _, coords_path = grid
    full = tmp_path / "full.h5"
    extract_features(slide, coords_path, full, encoder, batch_size=4)
    with h5py.File(full, "r") as f:
        expected = f["features"][()]

    out = tmp_path / "resumed.h5"
    stopped = extract_features(slide, coords_path, out, encoder, batch_size=4, max_batches=2)
    assert not stopped.complete and stopped.n_new == 8 and not out.exists()
    with h5py.File(partial_path(out), "r") as f:
        assert f.attrs["n_done"] == 8 and not f.attrs["complete"]
        assert f["features"].shape == (8, 32)

    def crash(batches: int, done: int) -> None:
        if batches == 1:  # one more batch of 4 written, not yet flushed (flush_every=8)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(slide, coords_path, out, encoder, batch_size=4, on_batch=crash)
    with h5py.File(partial_path(out), "r") as f:
        assert f.attrs["n_done"] == 12  # the rows written before the crash are kept

    res = extract_features(slide, coords_path, out, encoder, batch_size=4)
    assert res.complete and res.resumed_from == 12 and res.n_new == 2
    assert not partial_path(out).exists()
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and f.attrs["n_done"] == 14
        np.testing.assert_allclose(f["features"][()], expected, atol=1e-5)


def test_rows_after_the_last_flush_are_dropped_on_resume(
    slide: Path, encoder: Encoder, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    # a hard kill leaves rows beyond n_done (the last flush): they are rewritten, not trusted
    _, coords_path = grid
    out = tmp_path / "s.h5"
    extract_features(slide, coords_path, out, encoder, batch_size=4, max_batches=3)
    with h5py.File(partial_path(out), "a") as f:
        f.attrs["n_done"] = 4
        f["features"][4:] = np.nan
    res = extract_features(slide, coords_path, out, encoder, batch_size=4)
    assert res.resumed_from == 4
    with h5py.File(out, "r") as f:
        assert np.isfinite(f["features"][()]).all() and f["features"].shape == (14, 32)


def test_partial_file_for_other_tiles_starts_over(
    slide: Path, encoder: Encoder, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    coords, coords_path = grid
    out = tmp_path / "s.h5"
    other = write_coords(tmp_path / "other.h5", coords[::-1], TILE)
    extract_features(slide, other, out, encoder, batch_size=4, max_batches=1)
    res = extract_features(slide, coords_path, out, encoder, batch_size=4)
    assert res.resumed_from == 0 and res.n_new == 14
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["coords"][()], coords)


def test_zero_tiles_make_a_valid_empty_bag(
    slide: Path, encoder: Encoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coords_path = write_coords(tmp_path / "s.h5", np.zeros((0, 2)), TILE)
    out = tmp_path / "out" / "s.h5"
    with caplog.at_level(logging.WARNING, logger="medcl.wsi.features"):
        res = extract_features(slide, coords_path, out, encoder)
    assert res.complete and res.n_tiles == 0
    assert "s.h5: the slide has no tiles; writing an empty bag" in caplog.text
    with h5py.File(out, "r") as f:
        assert f["features"].shape == (0, 32) and f["coords"].shape == (0, 2)
        assert f.attrs["complete"]


def test_coords_file_errors_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(InvalidInputError, match=r"junk\.h5: not a readable HDF5 file"):
        read_tile_grid(junk)
    with h5py.File(tmp_path / "nocoords.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InvalidInputError, match=r"nocoords\.h5: no 'coords' dataset"):
        read_tile_grid(tmp_path / "nocoords.h5")
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f["coords"] = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(
        InvalidInputError, match=r"bare\.h5: the 'coords' dataset has no 'patch_size' attribute"
    ):
        read_tile_grid(tmp_path / "bare.h5")


def test_tile_geometry_from_clam_and_trident_grids(tmp_path: Path) -> None:
    clam = write_coords(tmp_path / "clam.h5", [[0, 0], [4, 8]], 256, level=1)
    ds = TileDataset.from_grid("s.tif", read_tile_grid(clam), torch.tensor)
    assert (ds.level, ds.patch_size, ds.read_size) == (1, 256, 256)  # no read_size: patch size
    assert ds.coords.tolist() == [[0, 0], [4, 8]]
    with h5py.File(tmp_path / "trident.h5", "w") as f:  # TRIDENT: level 0, read 512, resize 256
        d = f.create_dataset("coords", data=np.zeros((1, 2), dtype=np.int64))
        d.attrs.update({"patch_size": 256, "patch_size_level0": 512, "target_magnification": 20})
    ds = TileDataset.from_grid("s.tif", read_tile_grid(tmp_path / "trident.h5"), torch.tensor)
    assert (ds.level, ds.patch_size, ds.read_size) == (0, 256, 512)


def test_grid_attrs_keep_foreign_attrs_and_drop_unknowns(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "t.h5", "w") as f:
        d = f.create_dataset("coords", data=np.zeros((1, 2), dtype=np.int64))
        d.attrs.update({"patch_size": 256, "patch_level": 1, "name": "x", "downsample": [4, 4]})
    attrs = grid_attrs(read_coords(tmp_path / "t.h5").attrs)
    assert attrs == {
        "patch_size": 256,
        "patch_level": 1,
        "patch_size_level0": 1024,  # 256 x CLAM's downsample 4
        "read_size": 256,
        "overlap": 0,
        "slide": "x",
        "name": "x",
        "downsample": [4, 4],
    }


def test_coords_for_a_missing_level_fail_before_writing(
    slide: Path, encoder: Encoder, tmp_path: Path
) -> None:
    coords_path = write_coords(tmp_path / "s.h5", [[0, 0]], TILE, level=2)
    out = tmp_path / "out" / "s.h5"
    with pytest.raises(InvalidInputError) as err:
        extract_features(slide, coords_path, out, encoder)
    assert str(err.value) == (
        f"{slide}: the coords ask for level 2 but the slide has 2 levels; "
        "were they made on another slide?"
    )
    assert not out.exists() and not partial_path(out).exists()


def test_bf16_autocast_stores_float32_close_to_fp32(
    slide: Path, image: np.ndarray, encoder: Encoder, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    coords, coords_path = grid
    out = tmp_path / "s.h5"
    extract_features(slide, coords_path, out, encoder, batch_size=8, precision="bf16")
    with h5py.File(out, "r") as f:
        feats = f["features"][()]
    expected = reference(image, coords, encoder)
    assert feats.dtype == np.float32
    assert not np.allclose(feats, expected, atol=1e-6)  # bf16 really was used
    np.testing.assert_allclose(feats, expected, atol=0.1 * np.abs(expected).max())
    with pytest.raises(ValueError, match="precision must be fp32, fp16 or bf16, got 'int8'"):
        extract_features(slide, coords_path, out, encoder, precision="int8")  # type: ignore[arg-type]


def test_main_process_transform_runs_on_one_thread_and_forward_on_all(
    slide: Path, grid: tuple[np.ndarray, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coords, coords_path = grid
    model = create_encoder("open_clip:medcl-tiny-vit").eval()
    transform = model.eval_transform
    seen: list[int] = []

    def counting_transform(tile: np.ndarray) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return transform(tile)

    forward_threads: list[int] = []
    model.register_forward_pre_hook(lambda *_: forward_threads.append(torch.get_num_threads()))
    monkeypatch.setattr(model, "eval_transform", counting_transform)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tmp_path / "bag.h5"
        extract_features(slide, coords_path, out, model, batch_size=4, num_workers=0)
        assert seen == [1] * len(coords)
        assert forward_threads == [2] * 4  # 14 tiles in batches of 4
        assert torch.get_num_threads() == 2
        with h5py.File(out, "r") as f:
            np.testing.assert_allclose(
                f["features"][()], reference_features(slide, coords, model, transform), atol=1e-5
            )
    finally:
        torch.set_num_threads(before)


def reference_features(
    slide: Path, coords: np.ndarray, model: Encoder, transform: Any
) -> np.ndarray:
    ds = TileDataset(slide, coords, level=0, read_size=TILE, patch_size=TILE, transform=transform)
    with torch.inference_mode():
        return model(torch.stack([ds[i][0] for i in range(len(coords))])).numpy()


def test_tiles_are_transformed_once_per_batch_with_the_same_features(
    slide: Path, image: np.ndarray, grid: tuple[np.ndarray, Path], tmp_path: Path
) -> None:
    """Tiles are transformed a batch at a time by the transform's ``batch``; on the CPU in the
    main process (a worker only reads), with the same features for 0 and 1 loader workers."""
    from medcl.models.encoder_base import EvalTransform
    from medcl.wsi.features import RawTiles, TileBatch, transform_tiles

    coords, coords_path = grid
    model = create_encoder("open_clip:medcl-tiny-vit").eval()
    calls: list[tuple[int, int]] = []

    class CountingTransform(EvalTransform):
        def batch(self, images: Any) -> torch.Tensor:
            calls.append((len(images), torch.get_num_threads()))
            return super().batch(images)

    model.eval_transform = CountingTransform(model.spec)
    feats = {}
    for workers in (0, 1):
        out = tmp_path / f"bag{workers}.h5"
        extract_features(slide, coords_path, out, model, batch_size=4, num_workers=workers)
        with h5py.File(out, "r") as f:
            feats[workers] = f["features"][()]
    np.testing.assert_array_equal(feats[0], feats[1])
    np.testing.assert_allclose(feats[0], reference(image, coords, model), atol=1e-5)
    # on the CPU the main process transforms, on one thread, with 0 and with 1 worker (which
    # only reads)
    assert calls == [(4, 1), (4, 1), (4, 1), (2, 1)] * 2
    ds = TileDataset(
        slide, coords, level=0, read_size=TILE, patch_size=TILE, transform=model.eval_transform
    )
    raw = RawTiles(ds, start=12)
    assert len(raw) == 2 and raw[1][1] == 13
    np.testing.assert_array_equal(
        raw[0][0], image[coords[12][1] :][:TILE, coords[12][0] :][:, :TILE]
    )
    batch, index = TileBatch(model.eval_transform)([raw[0], raw[1]])
    assert index.tolist() == [12, 13]
    assert torch.equal(batch[1], model.eval_transform(raw[1][0]))
    tiles, index = TileBatch(None)([raw[0], raw[1]])  # what a CPU run's workers hand over
    assert tiles.dtype == torch.uint8 and tiles.shape == (2, TILE, TILE, 3)
    assert torch.equal(transform_tiles(model.eval_transform, list(tiles.numpy())), batch)
    ds.close()
