"""Whole-slide images (Aperio SVS, pyramidal TIFF, ...) through openslide or tiffslide.

:func:`open_slide` returns a :class:`Slide`, one face over either backend: level geometry,
microns per pixel (with where it came from), magnification, and regions as ``(h, w, 3)`` uint8
RGB arrays with transparent or out-of-bounds pixels shown white. Every problem with the file
becomes an :class:`~medcl.errors.InvalidInputError` naming it; openslide and tiffslide
exceptions never escape.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np
from PIL import Image

from medcl.errors import InvalidInputError
from medcl.io.limits import (
    check_count,
    check_dimensions,
    check_fits_file,
    max_pixels,
    max_slide_pixels,
)
from medcl.io.tiff_tiles import TiffLevelTiles, plain_tiff_levels

logger = logging.getLogger(__name__)

Backend = Literal["openslide", "tiffslide"]
BACKENDS: tuple[str, ...] = ("auto", "openslide", "tiffslide")
COMMON_MAGNIFICATIONS: tuple[float, ...] = (40.0, 20.0, 10.0, 5.0)
NO_MPP_MESSAGE = "no microns-per-pixel in the slide metadata; pass --mpp to supply it"

_APERIO_MPP = re.compile(r"(?:^|\|)\s*MPP\s*=\s*([0-9.eE+-]+)")
_APERIO_MAG = re.compile(r"(?:^|\|)\s*AppMag\s*=\s*([0-9.eE+-]+)")
_UNIT_MICRONS = {"centimeter": 1e4, "inch": 25400.0}
# Resolutions that image libraries and screens write by default (dots per inch). A slide
# scanner writes its real resolution (tens of thousands of dpi); one of these, or a unit of
# "none", says nothing about the scan.
_DEFAULT_DPI = (72.0, 96.0, 100.0, 120.0, 144.0, 150.0, 200.0, 240.0, 300.0, 600.0, 1200.0)
MAX_TAG_MPP = 50.0  # coarser than 0.2x: no microscope scan, a default or a photograph
# Single-file formats whose pixels all live in the file (MRXS and VMS keep theirs beside it).
_SINGLE_FILE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".qptiff")
# A thumbnail whose source level has more pixels than this is made block by block.
DIRECT_READ_PIXELS = 2**21
BLOCK_READ_PIXELS = 2**21


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _open_openslide(path: Path) -> Any:
    import openslide

    return openslide.OpenSlide(str(path))


def _open_tiffslide(path: Path) -> Any:
    import tiffslide

    return tiffslide.TiffSlide(str(path))


_OPENERS = {"openslide": _open_openslide, "tiffslide": _open_tiffslide}


def _positive_float(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def tiff_resolution_mpp(properties: Mapping[str, str]) -> float | None:
    """Level-0 um/px from the TIFF ``XResolution``/``ResolutionUnit`` tags, or None when they
    are absent or only a default: unit none, a common screen/print dpi (72, 96, 300, ...) or
    coarser than :data:`MAX_TAG_MPP` um/px."""
    unit = properties.get("tiff.ResolutionUnit", "").strip().lower()
    xres = _positive_float(properties.get("tiff.XResolution"))
    if unit not in _UNIT_MICRONS or xres is None:
        return None
    dpi = xres * _UNIT_MICRONS["inch"] / _UNIT_MICRONS[unit]
    if any(abs(dpi - default) <= 0.005 * default for default in _DEFAULT_DPI):
        return None
    mpp = _UNIT_MICRONS[unit] / xres
    return mpp if mpp <= MAX_TAG_MPP else None


def nearest_magnification(mpp: float) -> float:
    """Objective power matching ``mpp`` (10x ~ 1 um/px), snapped to 40/20/10/5 in log scale."""
    raw = 10.0 / mpp
    return min(COMMON_MAGNIFICATIONS, key=lambda mag: abs(math.log(raw / mag)))


class Slide:
    """An open whole-slide image; use :func:`open_slide` to make one.

    Coordinates follow openslide: ``location`` is ``(x, y)`` in level-0 pixels, ``size`` is
    ``(width, height)`` in pixels of the requested level; arrays come back ``(height, width, 3)``.
    """

    def __init__(
        self,
        path: Path,
        handle: Any,
        backend: Backend,
        *,
        mpp_override: float | None = None,
        direct_tiles: bool = True,
    ) -> None:
        self._path = path
        self._handle = handle
        self._backend: Backend = backend
        self._closed = False
        # plain tiled TIFF levels read without openslide's ARGB painting (found on first read)
        self._direct: dict[int, TiffLevelTiles] | None = (
            None if direct_tiles and backend == "openslide" else {}
        )
        self._properties = {str(k): str(v) for k, v in handle.properties.items() if v is not None}
        self._level_dimensions = [(int(w), int(h)) for w, h in handle.level_dimensions]
        self._level_downsamples = [float(d) for d in handle.level_downsamples]
        self._check_geometry()
        self._mpp, self._mpp_source = self._resolve_mpp(mpp_override)

    def _check_geometry(self) -> None:
        """Declared level sizes checked before any pixel is read: positive, level 0 the largest,
        within ``MEDCL_MAX_SLIDE_PIXELS``, and (single-file formats) held by the file's size."""
        if not self._level_dimensions:
            raise InvalidInputError(self._path, "slide declares no image levels")
        for level, dims in enumerate(self._level_dimensions):
            check_dimensions(self._path, dims, f"level {level} size (width, height)")
        width, height = self._level_dimensions[0]
        for level, (w, h) in enumerate(self._level_dimensions[1:], start=1):
            if w > width or h > height:
                raise InvalidInputError(
                    self._path,
                    f"level {level} ({w} x {h} px) is larger than level 0 ({width} x {height} px): "
                    "damaged header",
                )
        for level, ds in enumerate(self._level_downsamples):
            if not (math.isfinite(ds) and ds >= 1.0 - 1e-6):
                raise InvalidInputError(
                    self._path, f"level {level} has downsample {ds}: expected a number >= 1"
                )
        check_count(
            self._path,
            (width, height),
            limit=max_slide_pixels(),
            unit="px at level 0",
            variable="MEDCL_MAX_SLIDE_PIXELS",
        )
        if self._path.name.lower().endswith(_SINGLE_FILE_SUFFIXES) and self._path.is_file():
            check_fits_file(
                self._path,
                width * height * 3,
                self._path.stat().st_size,
                compressed=True,
                what=f"level-0 pixels ({width} x {height} px RGB)",
            )

    # ------------------------------------------------------------------ metadata
    def _resolve_mpp(self, override: float | None) -> tuple[float | None, str | None]:
        props = self._properties
        found: tuple[float, str] | None = None
        backend_mpp = _positive_float(props.get(f"{self._backend}.mpp-x"))
        xres = _positive_float(props.get("tiff.XResolution"))
        if backend_mpp is not None and xres is not None:
            # the backend may have taken it from the resolution tags (tiffslide does, even
            # from a 72-dpi default): then it is only as good as the tags
            unit = props.get("tiff.ResolutionUnit", "").strip().lower()
            tag_mpp = _UNIT_MICRONS[unit] / xres if unit in _UNIT_MICRONS else None
            if tag_mpp is not None and abs(tag_mpp - backend_mpp) <= 1e-3 * backend_mpp:
                backend_mpp = tiff_resolution_mpp(props)
        description = props.get("tiff.ImageDescription", "")
        aperio = _APERIO_MPP.search(description)
        aperio_mpp = _positive_float(aperio.group(1)) if aperio else None
        if backend_mpp is not None:
            found = (backend_mpp, self._backend)
        elif aperio_mpp is not None:
            found = (aperio_mpp, "aperio-description")
        elif (tag_based := tiff_resolution_mpp(props)) is not None:
            found = (tag_based, "tiff-resolution")
        if found is not None:
            if override is not None and abs(override - found[0]) > 0.05 * found[0]:
                logger.warning(
                    "%s: ignoring --mpp %.4g, the slide metadata (%s) says %.4g um/px",
                    self._path,
                    override,
                    found[1],
                    found[0],
                )
            return found
        if override is not None:
            return override, "override"
        return None, None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def properties(self) -> Mapping[str, str]:
        """All backend properties as strings (``openslide.*``/``tiffslide.*``, ``aperio.*``...)."""
        return self._properties

    @property
    def vendor(self) -> str | None:
        return self._properties.get(f"{self._backend}.vendor")

    @property
    def level_count(self) -> int:
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every level, level 0 first."""
        return list(self._level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._level_downsamples)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel, or None when neither metadata nor override give it."""
        return self._mpp

    @property
    def mpp_source(self) -> str | None:
        """Where :attr:`mpp` came from: backend name, ``aperio-description``,
        ``tiff-resolution`` or ``override`` (None without mpp)."""
        return self._mpp_source

    @property
    def magnification(self) -> float | None:
        """Objective power from the metadata, else derived from :attr:`mpp`, else None."""
        props = self._properties
        power = _positive_float(props.get(f"{self._backend}.objective-power"))
        if power is None:
            match = _APERIO_MAG.search(props.get("tiff.ImageDescription", ""))
            power = _positive_float(match.group(1)) if match else None
        if power is not None:
            return power
        return nearest_magnification(self._mpp) if self._mpp is not None else None

    @property
    def associated_images(self) -> dict[str, tuple[int, int]]:
        """Names of the label / macro / thumbnail images with their ``(width, height)``."""
        out: dict[str, tuple[int, int]] = {}
        for name in self._handle.associated_images:
            image = self._handle.associated_images[name]
            out[str(name)] = (int(image.size[0]), int(image.size[1]))
        return out

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (None when the slide has no mpp)."""
        self._check_level(level)
        return None if self._mpp is None else self._mpp * self.level_downsamples[level]

    def require_mpp(self) -> float:
        """Level-0 mpp, or :class:`InvalidInputError` telling the user to pass ``--mpp``."""
        if self._mpp is None:
            raise InvalidInputError(self._path, NO_MPP_MESSAGE)
        return self._mpp

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """Highest-resolution level whose downsample does not exceed ``downsample``."""
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            if level_ds <= downsample * (1 + 1e-6):
                best = level
        return best

    # ------------------------------------------------------------------ pixels
    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"{self._path.name}: level {level} out of range (slide has "
                f"{self.level_count} levels, 0..{self.level_count - 1})"
            )

    def _check_region(self, location: tuple[int, int], size: tuple[int, int]) -> None:
        if self._closed:
            raise ValueError(f"{self._path.name}: slide is closed")
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"{self._path.name}: region size must be positive, got {size}")
        if location[0] < 0 or location[1] < 0:
            raise ValueError(f"{self._path.name}: region location must be >= 0, got {location}")

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read a region as RGB.

        Args:
            location: ``(x, y)`` of the top-left corner in level-0 pixels.
            level: pyramid level to read from.
            size: ``(width, height)`` in pixels of ``level``.

        Returns:
            ``(height, width, 3)`` uint8 RGB; background outside the tissue scan or the image
            bounds is white.
        """
        self._check_region(location, size)
        self._check_level(level)
        loc = (int(location[0]), int(location[1]))
        wh = (int(size[0]), int(size[1]))
        if wh[0] * wh[1] > (limit := max_pixels()):
            raise InvalidInputError(
                self._path,
                f"region of {wh[0]} x {wh[1]} px at level {level} is more than the {limit:,} px "
                "read at once (set MEDCL_MAX_PIXELS to raise the limit, or read it by tiles)",
            )
        direct = self._direct_level(level, loc)
        if direct is not None:
            try:
                return direct[0].read(direct[1], direct[2], *wh)
            except Exception as exc:  # noqa: BLE001 - openslide reads it and names any damage
                logger.info("%s: direct tile reads off (%s)", self._path, _one_line(exc))
                self._direct = {}
        try:
            if self._backend == "openslide":
                return _rgb_over_white(self._handle.read_region(loc, level, wh))
            rgb = np.asarray(self._handle.read_region(loc, level, wh, as_array=True))
        except Exception as exc:  # any backend failure here means a damaged file
            raise InvalidInputError(
                self._path,
                f"cannot read region {wh} at {loc} level {level} "
                f"({self._backend}: {_one_line(exc)}); the file may be corrupted",
            ) from exc
        return self._whiten_outside(rgb[..., :3].astype(np.uint8, copy=False), loc, level)

    def _read_level_pixels(
        self, level: int, origin: tuple[int, int], size: tuple[int, int]
    ) -> np.ndarray:
        """``size`` pixels of ``level`` from its own pixel ``origin`` ``(x, y)``.

        A direct level is read at exactly that pixel. Through the backend the origin becomes the
        level-0 location ``round(origin * downsample)``; where the downsample is not an integer
        (``2.0005`` on many SVS) that location falls between level pixels and the backend
        resamples, shifting the read by up to a fraction of a pixel.
        """
        reader = self._direct_readers().get(level)
        wh = (int(size[0]), int(size[1]))
        if reader is not None and wh[0] * wh[1] <= max_pixels():
            try:
                return reader.read(int(origin[0]), int(origin[1]), *wh)
            except Exception as exc:  # noqa: BLE001 - openslide reads it and names any damage
                logger.info("%s: direct tile reads off (%s)", self._path, _one_line(exc))
                self._direct = {}
        ds = self.level_downsamples[level]
        return self.read_region((round(origin[0] * ds), round(origin[1] * ds)), level, wh)

    @property
    def direct_levels(self) -> list[int]:
        """Levels read by decoding their TIFF tiles directly (:mod:`medcl.io.tiff_tiles`); empty
        when every read goes through the backend (other formats, ``direct_tiles=False``, or
        after a tile that did not decode)."""
        return sorted(self._direct_readers())

    def _direct_readers(self) -> dict[int, TiffLevelTiles]:
        if self._direct is None:  # found on first use: opening a slide stays cheap
            self._direct = plain_tiff_levels(self._path, self.vendor, self._level_dimensions)
        return self._direct

    def _direct_level(
        self, level: int, location: tuple[int, int]
    ) -> tuple[TiffLevelTiles, int, int] | None:
        """The direct reader of ``level`` and ``location`` in its pixels, when the level is a
        plain tiled TIFF page and ``location`` falls on a whole pixel of it (openslide would
        resample otherwise)."""
        reader = self._direct_readers().get(level)
        if reader is None:
            return None
        if level == 0:
            return reader, location[0], location[1]
        ds = self._level_downsamples[level]
        x, y = location[0] / ds, location[1] / ds
        if x != int(x) or y != int(y):
            return None
        return reader, int(x), int(y)

    def _whiten_outside(self, rgb: np.ndarray, location: tuple[int, int], level: int) -> np.ndarray:
        # tiffslide pads out-of-bounds pixels black; openslide makes them transparent (white).
        width, height = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        x0 = math.floor(location[0] / ds)
        y0 = math.floor(location[1] / ds)
        inside_w = max(0, width - x0)
        inside_h = max(0, height - y0)
        if inside_w >= rgb.shape[1] and inside_h >= rgb.shape[0]:
            return rgb
        out = rgb.copy()
        out[:, inside_w:] = 255
        out[inside_h:, :] = 255
        return out

    def read_region_mpp(
        self, location: tuple[int, int], mpp: float, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` pixels at ``mpp`` microns per pixel, starting at level-0 ``location``.

        Reads from the highest-resolution level not finer than needed (level mpp <= ``mpp``)
        and resamples with a Lanczos filter (area-like when shrinking) to exactly ``size``.

        Returns:
            ``(height, width, 3)`` uint8 RGB covering ``size * mpp`` microns.
        """
        base = self.require_mpp()
        if not mpp > 0:
            raise ValueError(f"{self._path.name}: target mpp must be positive, got {mpp}")
        self._check_region(location, size)
        downsample = mpp / base
        level = self.get_best_level_for_downsample(downsample)
        scale = downsample / self.level_downsamples[level]  # >= 1 unless upsampling level 0
        if abs(scale - 1.0) < 1e-3:
            return self.read_region(location, level, size)
        src_w = max(1, math.ceil(size[0] * scale - 1e-6))
        src_h = max(1, math.ceil(size[1] * scale - 1e-6))
        region = self.read_region(location, level, (src_w, src_h))
        resized = Image.fromarray(region).resize(
            (int(size[0]), int(size[1])),
            Image.Resampling.LANCZOS,
            box=(0.0, 0.0, size[0] * scale, size[1] * scale),
        )
        return np.asarray(resized)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Whole slide shrunk so its longer side is ``max_size`` (aspect kept), ``(h, w, 3)``.

        Reads the lowest-resolution level that is still at least ``max_size`` on its longer
        side (level 0 when none is) and shrinks it by area averaging (each output pixel the
        mean of its footprint). A level of more than :data:`DIRECT_READ_PIXELS` is read in
        blocks of about :data:`BLOCK_READ_PIXELS`, so neither a large pyramid nor a large
        level without one is ever held whole in memory.
        """
        if max_size <= 0:
            raise ValueError(f"{self._path.name}: max_size must be positive, got {max_size}")
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        level = 0
        for candidate, (lw, lh) in enumerate(self.level_dimensions):
            if lw >= target[0] and lh >= target[1]:
                level = candidate
        lw, lh = self.level_dimensions[level]
        if lw * lh > DIRECT_READ_PIXELS and (lw, lh) != target:
            return self._shrink_by_blocks(level, target)
        region = self.read_region((0, 0), level, (lw, lh))
        if region.shape[1] == target[0] and region.shape[0] == target[1]:
            return region
        return np.asarray(Image.fromarray(region).resize(target, Image.Resampling.BOX))

    def _shrink_by_blocks(self, level: int, target: tuple[int, int]) -> np.ndarray:
        """``level`` shrunk to ``target`` ``(w, h)`` by area averaging, reading blocks of at most
        about :data:`BLOCK_READ_PIXELS` (full-width stripes when they fit), never the level whole.

        Each output pixel is the mean of its footprint in the level, which lies inside one
        block, so the result does not depend on the block size (to rounding).
        """
        lw, lh = self.level_dimensions[level]
        tw, th = target
        sx, sy = lw / tw, lh / th
        rows = int(BLOCK_READ_PIXELS // (lw * sy))
        if rows >= 1:
            block_h, block_w = rows, tw
        else:
            block_h, block_w = 1, max(1, int(BLOCK_READ_PIXELS // (sx * sy)))
        out = np.empty((th, tw, 3), dtype=np.uint8)
        for oy in range(0, th, block_h):
            bh = min(block_h, th - oy)
            y0, y1 = oy * sy, (oy + bh) * sy
            ry0, ry1 = math.floor(y0), min(lh, math.ceil(y1 - 1e-9))
            for ox in range(0, tw, block_w):
                bw = min(block_w, tw - ox)
                x0, x1 = ox * sx, (ox + bw) * sx
                rx0, rx1 = math.floor(x0), min(lw, math.ceil(x1 - 1e-9))
                region = self._read_level_pixels(level, (rx0, ry0), (rx1 - rx0, ry1 - ry0))
                box = (x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0)
                small = Image.fromarray(region).resize((bw, bh), Image.Resampling.BOX, box=box)
                out[oy : oy + bh, ox : ox + bw] = np.asarray(small)
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if not self._closed:
            self._handle.close()
            for reader in (self._direct or {}).values():
                reader.close()
            self._closed = True

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({self._path.name!r}, backend={self._backend!r}, "
            f"dimensions={self.dimensions}, levels={self.level_count}, mpp={self._mpp})"
        )


def _rgb_over_white(image: Image.Image) -> np.ndarray:
    """An RGBA PIL image (what openslide reads) as ``(h, w, 3)`` uint8 RGB over white.

    Fully opaque regions (the usual case inside a scan) are converted by PIL in C, about half
    the time of numpy's strided channel copy; others are blended by :func:`_composite_on_white`.
    """
    if image.getchannel("A").getextrema() == (255, 255):
        return np.array(image.convert("RGB"))  # writable, as the blend below
    return _composite_on_white(np.asarray(image))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` uint8 straight-alpha RGBA -> ``(h, w, 3)`` uint8 RGB over white.

    Integer arithmetic: ``(rgb * a + 255 * (255 - a) + 127) // 255`` is the rounded blend
    (255 is odd, so no value falls half-way) in uint16, a third of the float32 memory.
    """
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    out = rgba[..., :3].astype(np.uint16)
    out *= a
    out += 255 * (255 - a) + 127
    out //= 255
    return out.astype(np.uint8)


def open_slide(
    path: str | PathLike[str],
    *,
    backend: str = "auto",
    mpp: float | None = None,
    direct_tiles: bool = True,
) -> Slide:
    """Open a whole-slide image.

    Args:
        path: slide file (SVS, pyramidal TIFF, NDPI, MRXS... whatever the backend reads).
        backend: ``"openslide"``, ``"tiffslide"``, or ``"auto"`` (openslide, then tiffslide
            when openslide cannot open the file).
        mpp: microns per pixel to use when the slide metadata has none.
        direct_tiles: read plain tiled TIFF levels (Aperio SVS, generic pyramidal TIFF) by
            decoding their tiles directly (:mod:`medcl.io.tiff_tiles`; the same pixels as
            openslide, a third of the time); False reads every region through the backend.

    Raises:
        InvalidInputError: the file is missing, empty, a folder, or no backend can read it.
        ValueError: unknown ``backend`` or a non-positive ``mpp``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp}")
    file = Path(path)
    if not file.exists():
        raise InvalidInputError(file, "slide file not found")
    if file.is_dir():
        raise InvalidInputError(file, "is a folder, not a slide file")
    if file.stat().st_size == 0:
        raise InvalidInputError(file, "slide file is empty (0 bytes)")
    names: list[Backend] = (
        ["openslide", "tiffslide"] if backend == "auto" else [cast(Backend, backend)]
    )
    failures: list[str] = []
    for name in names:
        try:
            handle = _OPENERS[name](file)
        except Exception as exc:  # noqa: BLE001 - each backend raises its own zoo of errors
            failures.append(f"{name}: {_one_line(exc)}")
            continue
        logger.info("%s: opened with %s", file, name)
        try:
            return Slide(file, handle, name, mpp_override=mpp, direct_tiles=direct_tiles)
        except InvalidInputError:  # the header itself is impossible: no backend reads it
            handle.close()
            raise
        except Exception as exc:  # noqa: BLE001 - metadata read failures mean a bad file
            handle.close()
            failures.append(f"{name}: {_one_line(exc)}")
    raise InvalidInputError(file, f"not a readable slide ({'; '.join(failures)})")
