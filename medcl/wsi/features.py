"""Tile features of one slide into a bag file, resumable: :func:`extract_features`.

Output layout (the WSI contract): ``features`` ``(N, D)`` float32 and ``coords`` ``(N, 2)``
int64 in the coords file's order (its attrs copied), file attrs ``encoder``, ``embed_dim``,
``n_tiles``, ``n_done`` and ``complete``. Rows are appended to ``<stem>.partial.h5`` (a resizable,
chunked dataset) and ``n_done`` is flushed every ``flush_every`` batches and when the run stops;
a later call resumes from ``n_done``. When every tile is done the partial file gets
``complete=True`` and is renamed over ``out_path`` atomically, so a file at ``out_path`` is
always finished. The job over a whole tiling folder is :mod:`medcl.wsi.extract_job`.

Run as ``python -m medcl.wsi.features --job ... --encoder ...`` (also under torchrun) it is the
``medcl wsi extract`` command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medcl.errors import InvalidInputError
from medcl.io.slides import open_slide
from medcl.models.encoder_base import Encoder
from medcl.wsi.coords_io import CoordsAttrs, TileGrid, read_coords
from medcl.wsi.tile_dataset import TileDataset

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: ``on_batch(batches_done, tiles_done)``, called after each batch is written
BatchCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractResult:
    """What one :func:`extract_features` call did.

    Attributes:
        out_path: the finished bag file (or the partial file when ``complete`` is False).
        n_tiles: tiles of the slide.
        n_new: tiles encoded by this call (``n_tiles - resumed_from`` when it finished).
        resumed_from: tiles already in the partial file when the call started.
        seconds: wall time of this call.
        complete: whether the bag is finished.
    """

    out_path: Path
    n_tiles: int
    n_new: int
    resumed_from: int
    seconds: float
    complete: bool

    @property
    def tiles_per_s(self) -> float:
        """Tiles encoded per second by this call (reading, transform and forward together)."""
        return self.n_new / self.seconds if self.seconds > 0 else 0.0


def read_tile_grid(path: str | Path) -> TileGrid:
    """Read a coords HDF5 with :func:`~medcl.wsi.coords_io.read_coords` for encoding its tiles.

    Raises:
        InvalidInputError: what ``read_coords`` raises, or no ``patch_size`` attribute (the
            tile side cannot be known).
    """
    grid = read_coords(path)
    if grid.attrs.patch_size is None:
        raise InvalidInputError(path, "the 'coords' dataset has no 'patch_size' attribute")
    return grid


def grid_attrs(attrs: CoordsAttrs) -> dict[str, Any]:
    """``attrs`` as the HDF5 attributes to copy onto the bag's ``coords`` (None values left out).

    The other tools' attributes (``attrs.extra``) come first; the contract's names win.
    """
    known = {f.name: getattr(attrs, f.name) for f in fields(attrs) if f.name != "extra"}
    return {**attrs.extra, **{k: v for k, v in known.items() if v is not None}}


def partial_path(out_path: str | Path) -> Path:
    """``x/slide.h5`` -> ``x/slide.partial.h5``, where an unfinished bag is written."""
    p = Path(out_path)
    return p.with_name(f"{p.stem}.partial.h5")


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a features file whose ``complete`` attr is True."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with h5py.File(p, "r") as f:
            return bool(f.attrs.get("complete", False)) and "features" in f
    except OSError:
        return False


def _open_partial(
    path: Path, grid: TileGrid, encoder: Encoder, slide_name: str
) -> tuple[h5py.File, int]:
    """Open (resume) or create the partial file; returns it and the number of rows done."""
    dim = encoder.embed_dim
    if path.is_file():
        try:
            f = h5py.File(path, "a")
        except OSError as exc:
            logger.warning("%s: unreadable partial file (%s); starting over", path, exc)
        else:
            same = (
                f.attrs.get("encoder") == encoder.name
                and int(f.attrs.get("embed_dim", -1)) == dim
                and "features" in f
                and "coords" in f
                and np.array_equal(f["coords"][()], grid.coords)
            )
            n_done = int(f.attrs.get("n_done", 0))
            if same and 0 <= n_done <= len(grid) and f["features"].shape[0] >= n_done:
                f["features"].resize(n_done, axis=0)  # rows written after the last flush
                return f, n_done
            f.close()
            logger.warning("%s: partial file is for other tiles or encoder; starting over", path)
        path.unlink()
    n = len(grid)
    f = h5py.File(path, "w")
    f.attrs.update(
        {
            "encoder": encoder.name,
            "embed_dim": dim,
            "slide": slide_name,
            "n_tiles": n,
            "n_done": 0,
            "complete": False,
        }
    )
    c = f.create_dataset("coords", data=grid.coords.reshape(n, 2).astype(np.int64))
    c.attrs.update(grid_attrs(grid.attrs))
    chunk_rows = max(1, min(n, 1024))
    f.create_dataset(
        "features", shape=(0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(chunk_rows, dim)
    )
    return f, 0


def _check_slide(slide_path: str | Path, grid: TileGrid, mpp: float | None) -> None:
    """Fail before any file is written when the slide is unreadable or lacks the level."""
    level = grid.attrs.patch_level
    with open_slide(slide_path, mpp=mpp) as slide:
        if level >= slide.level_count:
            raise InvalidInputError(
                slide_path,
                f"the coords ask for level {level} but the slide has "
                f"{slide.level_count} levels; were they made on another slide?",
            )


class RawTiles(Dataset[tuple[np.ndarray, int]]):
    """``raw[k] -> (uint8 tile, index)`` for the tiles ``start, start + 1, ...`` of ``dataset``,
    untransformed: the transform runs once per batch (:func:`transform_tiles`)."""

    def __init__(self, dataset: TileDataset, start: int = 0) -> None:
        self.dataset = dataset
        self.start = start

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.start)

    def __getitem__(self, k: int) -> tuple[np.ndarray, int]:
        index = self.start + k
        return self.dataset.read_tile(index), index


def transform_tiles(
    transform: Callable[[np.ndarray], torch.Tensor], tiles: list[np.ndarray]
) -> torch.Tensor:
    """``(B, 3, H, W)`` float32: ``tiles`` (uint8 ``(h, w, 3)``) through ``transform``.

    The transform's ``batch`` (see :meth:`~medcl.models.encoder_base.EvalTransform.batch`) makes
    the whole batch at once when it has one (a table lookup, or one resize of the whole batch);
    otherwise each tile is transformed and the results stacked. Always on one torch thread: small
    per-tile torch ops on the default pool spend most of their time handing work between threads
    (measured 40 ms a tile on 2 threads, 2.3 ms on one), and even the batched resize was slower
    on 2 threads than on 1 on the busy 2-core machine (7.5 against 5.7 ms a tile, read included),
    where a second thread waits for a core the forward or another job holds. Never under
    autocast: inputs are prepared in float32.
    """
    batch = getattr(transform, "batch", None)
    with torch.autocast("cpu", enabled=False), torch_threads(1):
        if batch is not None:
            out: torch.Tensor = batch(tiles)
            return out
        return torch.stack([transform(tile) for tile in tiles])


class TileBatch:
    """Collate ``[(uint8 tile, index), ...]`` into ``(images, indices (B,))``.

    With a ``transform``, ``images`` is the transformed ``(B, 3, H, W)`` float32 batch
    (:func:`transform_tiles`); without, the tiles stacked as they were read, ``(B, h, w, 3)``
    uint8, for the main process to transform (a quarter of the bytes to hand over). A class, so
    it pickles into DataLoader workers.
    """

    def __init__(self, transform: Callable[[np.ndarray], torch.Tensor] | None) -> None:
        self.transform = transform

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = [tile for tile, _ in items]
        index = torch.tensor([i for _, i in items], dtype=torch.int64)
        if self.transform is None:
            return torch.from_numpy(np.stack(tiles)), index
        return transform_tiles(self.transform, tiles), index


def _loader(
    dataset: TileDataset,
    start: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    transform_in_workers: bool,
) -> DataLoader[tuple[np.ndarray, int]]:
    return DataLoader(
        RawTiles(dataset, start),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=TileBatch(dataset.transform if transform_in_workers else None),
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
    )


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _main_process_batches(
    dataset: TileDataset, start: int, batch_size: int, pin: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches read and transformed in this process (``num_workers=0``), as the DataLoader
    makes them (:class:`TileBatch`)."""
    raw, collate = RawTiles(dataset, start), TileBatch(dataset.transform)
    for first in range(0, len(raw), batch_size):
        images, index = collate([raw[k] for k in range(first, min(first + batch_size, len(raw)))])
        yield (images.pin_memory() if pin else images), index


def extract_features(
    slide_path: str | Path,
    coords_path: str | Path,
    out_path: str | Path,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    flush_every: int = 8,
    max_batches: int | None = None,
    on_batch: BatchCallback | None = None,
    mpp: float | None = None,
) -> ExtractResult:
    """Encode every tile listed in ``coords_path`` and write the bag to ``out_path``.

    Args:
        slide_path: the slide the coords were made on.
        coords_path: its coords HDF5 (see :func:`read_tile_grid`).
        out_path: the bag file to write (``features_<encoder>/<stem>.h5``).
        encoder: moved to ``device`` and put in eval mode; tiles go through its
            ``eval_transform``.
        batch_size, num_workers: of the tile DataLoader (workers read tiles in parallel; with
            0, here). Tiles are transformed a batch at a time on one thread
            (:func:`transform_tiles`): here, between forwards, on the CPU; in the workers when
            ``device`` is an accelerator.
        precision: ``"fp32"``, or autocast to ``"fp16"`` / ``"bf16"`` (features stored float32).
        flush_every: batches between flushes of the partial file (and its ``n_done``).
        max_batches: stop after this many batches, leaving a resumable partial file.
        on_batch: called as ``on_batch(batches_done, tiles_done)`` after each written batch; an
            exception it raises stops the run the same way (the rows written are kept).
        mpp: microns per pixel for a slide without it (given to open_slide; reads need none).

    Returns:
        An :class:`ExtractResult`; ``complete`` is False when stopped by ``max_batches``.
    """
    if batch_size < 1 or flush_every < 1:
        raise ValueError(
            f"batch_size and flush_every must be >= 1, got {batch_size}, {flush_every}"
        )
    if precision not in ("fp32", *_DTYPES):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    start_time = time.perf_counter()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = read_tile_grid(coords_path)
    n = len(grid)
    dev = torch.device(device)
    encoder = encoder.to(dev).eval()
    if n:
        _check_slide(slide_path, grid, mpp)
    tmp = partial_path(out)
    f, n_done = _open_partial(tmp, grid, encoder, Path(slide_path).name)
    resumed_from = n_done
    if resumed_from:
        logger.info("%s: resuming at tile %d of %d", out.name, resumed_from, n)
    batches = 0
    try:
        if n_done < n:
            dataset = TileDataset.from_grid(slide_path, grid, encoder.eval_transform, mpp=mpp)
            autocast = (
                torch.autocast(dev.type, dtype=_DTYPES[precision])
                if precision in _DTYPES
                else nullcontext()
            )
            features = f["features"]
            # On the CPU the workers only read: the transform then runs here, between forwards
            # (one thread), instead of in workers that compete with the forward's threads for
            # the same cores while it runs. With an accelerator the workers transform too.
            in_workers = dev.type != "cpu"
            batches_in: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
                _loader(dataset, n_done, batch_size, num_workers, dev, in_workers)
                if num_workers > 0
                else _main_process_batches(dataset, n_done, batch_size, dev.type == "cuda")
            )
            with torch.inference_mode(), autocast:
                for images, index in batches_in:
                    if max_batches is not None and batches >= max_batches:
                        break
                    if int(index[0]) != n_done:  # the loader must keep the coords order
                        raise RuntimeError(f"tile {int(index[0])} arrived, {n_done} expected")
                    if images.dtype == torch.uint8:  # read by the workers, transformed here
                        images = transform_tiles(dataset.transform, list(images.numpy()))
                    emb = encoder(images.to(dev, non_blocking=True)).float().cpu().numpy()
                    features.resize(n_done + len(emb), axis=0)
                    features[n_done:] = emb
                    n_done += len(emb)
                    batches += 1
                    if batches % flush_every == 0:
                        f.attrs["n_done"] = n_done
                        f.flush()
                    if on_batch is not None:
                        on_batch(batches, n_done)
        elif n == 0:
            logger.warning("%s: the slide has no tiles; writing an empty bag", out.name)
        complete = n_done == n
        f.attrs["complete"] = complete
    finally:
        f.attrs["n_done"] = n_done  # the rows before n_done are written whatever stopped us
        f.close()
    seconds = time.perf_counter() - start_time
    result = ExtractResult(
        out_path=out if complete else tmp,
        n_tiles=n,
        n_new=n_done - resumed_from,
        resumed_from=resumed_from,
        seconds=seconds,
        complete=complete,
    )
    if complete:
        tmp.replace(out)  # atomic: a file at out_path is always finished
        logger.info("%s: %d tiles, %.1f tiles/s", out.name, n, result.tiles_per_s)
    return result
