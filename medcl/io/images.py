"""Labelled 2D image sets: one image reader, the :class:`ImageSet` table, manifests, a Dataset.

An :class:`ImageSet` is a pandas table with one row per image and the columns ``path`` (absolute),
``label``, ``domain`` (hospital, scanner, body site, ...) and ``group`` (patient, lesion, slide: the
unit a split must never divide), plus any metadata columns. Its ``class_map`` (class name -> index)
is explicit and saved with models, so class indices never depend on which labels a subset has.

Formats are looked up by name in :data:`IMAGE_SETS` ('manifest', 'ham10000', 'camelyon17',
'class_folders'); each registers how to recognise its layout, and :func:`detect_format` asks them
(:class:`ImageSetRegistry`).

Manifest CSV: columns ``path,label[,domain][,group]`` plus any metadata; ``path`` is relative to
the manifest's folder (or to ``root``) or absolute; ``domain`` defaults to ``"default"`` and
``group`` to the path as written. Rows are numbered from 1, the header excluded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from medcl.errors import InvalidInputError
from medcl.io.limits import check_count, max_pixels
from medcl.registry import Registry

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "domain", "group")
DEFAULT_DOMAIN = "default"
_MAX_LISTED = 5


def read_image(
    path: str | os.PathLike[str],
    *,
    expected_size: tuple[int, int] | None = None,
    mode: str = "RGB",
) -> np.ndarray:
    """Read a 2D image file fully into memory.

    Args:
        path: an image file PIL can decode (JPEG, PNG, TIFF, BMP, ...).
        expected_size: ``(width, height)`` the image must have (PIL's order), or ``None``.
        mode: PIL mode to convert to (``"RGB"`` gives 3 channels, ``"L"`` one).

    Returns:
        ``(H, W, 3)`` uint8 array for ``"RGB"`` (``(H, W)`` for single-channel modes).

    Raises:
        InvalidInputError: the file is missing, empty, not an image, truncated, the wrong size,
            or declares more pixels than ``MEDCL_MAX_PIXELS`` (checked before decoding).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "image file not found")
    if p.stat().st_size == 0:
        raise InvalidInputError(p, "image file is empty (0 bytes)")
    try:
        with Image.open(p) as img:
            size = img.size  # from the header: checked before anything is decoded
            check_count(p, size, limit=max_pixels(), unit="px", variable="MEDCL_MAX_PIXELS")
            img.load()  # force a full decode: truncated files fail here, not later
            if expected_size is not None and tuple(size) != tuple(expected_size):
                raise InvalidInputError(
                    p,
                    f"image is {size[0]}x{size[1]}, expected {expected_size[0]}x{expected_size[1]}",
                )
            array = np.array(img.convert(mode))  # writable copy
    except UnidentifiedImageError:
        raise InvalidInputError(
            p, "cannot identify image file (not an image or unknown format)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(p, f"image is too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError(p, f"image is truncated or corrupt ({exc})") from None
    return array.astype(np.uint8, copy=False)


class ImageSet:
    """A labelled set of 2D images with domains and groups.

    Args:
        df: one row per image with columns ``path``, ``label``, ``domain``, ``group`` (converted
            to str) and any metadata columns.
        root: folder the set was loaded from (relative manifest paths resolve against it).
        name: a short name shown in logs and figures.
        class_map: class name -> index; sorted class names by default. Every label must be in it.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        *,
        root: str | os.PathLike[str] | None = None,
        name: str = "images",
        class_map: Mapping[str, int] | None = None,
    ) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        where = root if root is not None else name
        if missing:
            raise InvalidInputError(where, f"image table lacks column(s) {', '.join(missing)}")
        df = df.reset_index(drop=True).copy()
        for col in REQUIRED_COLUMNS:
            df[col] = df[col].astype(str)
        self.df = df
        self.root = Path(root) if root is not None else None
        self.name = name
        if class_map is None:
            class_map = {c: i for i, c in enumerate(sorted(df["label"].unique()))}
        self.class_map: dict[str, int] = {str(k): int(v) for k, v in class_map.items()}
        if len(set(self.class_map.values())) != len(self.class_map):
            raise InvalidInputError(where, f"class map gives two classes one index: {class_map}")
        unmapped = sorted(set(df["label"]) - set(self.class_map))
        if unmapped:
            raise InvalidInputError(where, f"labels not in the class map: {', '.join(unmapped)}")

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return (
            f"ImageSet(name={self.name!r}, n={len(self)}, classes={len(self.class_map)}, "
            f"domains={self.df['domain'].nunique()}, groups={self.df['group'].nunique()})"
        )

    def _derive(self, df: pd.DataFrame, class_map: Mapping[str, int] | None = None) -> ImageSet:
        cmap = self.class_map if class_map is None else class_map
        return ImageSet(df, root=self.root, name=self.name, class_map=cmap)

    @property
    def classes(self) -> list[str]:
        """Class names ordered by index."""
        return sorted(self.class_map, key=self.class_map.__getitem__)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 class indices through :attr:`class_map`."""
        return self.df["label"].map(self.class_map).to_numpy(dtype=np.int64)

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts (``path``, ``label``, ``domain``, ``group`` and metadata)."""
        return [{str(k): v for k, v in r.items()} for r in self.df.to_dict(orient="records")]

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class-index order (classes without images count 0)."""
        counts = self.df["label"].value_counts()
        return {c: int(counts.get(c, 0)) for c in self.classes}

    def domain_counts(self) -> dict[str, int]:
        """Images per domain, sorted by domain name."""
        return {str(k): int(v) for k, v in sorted(self.df["domain"].value_counts().items())}

    def group_counts(self) -> dict[str, int]:
        """Images per group, sorted by group id."""
        return {str(k): int(v) for k, v in sorted(self.df["group"].value_counts().items())}

    def _check_known(self, column: str, values: Iterable[str]) -> list[str]:
        values = [str(v) for v in values]
        known = set(self.df[column])
        if column == "label":
            known |= set(self.class_map)
        unknown = [v for v in values if v not in known]
        if unknown:
            raise InvalidInputError(
                self.root or self.name,
                f"unknown {column}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            )
        return values

    def filter(
        self,
        *,
        domains: Iterable[str] | None = None,
        exclude_domains: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
    ) -> ImageSet:
        """Rows whose domain is in ``domains``, not in ``exclude_domains`` and label in ``labels``.

        The class map is kept. A value that names no domain or class is an error (catches typos).
        """
        keep = np.ones(len(self), dtype=bool)
        if domains is not None:
            keep &= self.df["domain"].isin(self._check_known("domain", domains)).to_numpy()
        if exclude_domains is not None:
            keep &= ~self.df["domain"].isin(self._check_known("domain", exclude_domains)).to_numpy()
        if labels is not None:
            keep &= self.df["label"].isin(self._check_known("label", labels)).to_numpy()
        return self._derive(self.df[keep])

    def subset(self, idx: Sequence[int] | np.ndarray) -> ImageSet:
        """Rows at integer positions (or a boolean mask of length N); the class map is kept."""
        arr = np.asarray(idx)
        if arr.dtype == bool:
            arr = np.flatnonzero(arr)
        return self._derive(self.df.iloc[arr.astype(np.int64)])

    def with_class_map(
        self, class_map: Mapping[str, int], *, drop_unmapped: bool = False
    ) -> ImageSet:
        """The set under another class map (e.g. the one saved with a model).

        Labels missing from the map are an error listing them, unless ``drop_unmapped`` drops
        their rows.
        """
        if drop_unmapped:
            dropped = ~self.df["label"].isin(list(class_map))
            if dropped.any():
                logger.info("%s: dropped %d images of unmapped classes", self.name, dropped.sum())
            return self._derive(self.df[~dropped], class_map)
        return self._derive(self.df, class_map)

    def remap_labels(
        self, mapping: Mapping[str, str], *, class_map: Mapping[str, int] | None = None
    ) -> ImageSet:
        """Rename or merge classes (``{'mel': 'malignant', 'bcc': 'malignant'}``).

        Labels not in ``mapping`` keep their name. The new class map is ``class_map`` or the
        sorted new class names.
        """
        self._check_known("label", mapping)
        df = self.df.copy()
        df["label"] = df["label"].map(lambda v: mapping.get(v, v))
        if class_map is None:
            names = {mapping.get(c, c) for c in self.class_map}
            class_map = {c: i for i, c in enumerate(sorted(names))}
        return self._derive(df, class_map)

    def validate_files(self, *, check_decode: bool = False) -> None:
        """Raise one :class:`InvalidInputError` if any file is missing (or fails to decode).

        The message gives the count and the first few rows (numbered from 1) and files.
        """
        bad: list[tuple[int, str, str]] = []
        for i, path in enumerate(self.df["path"], start=1):
            if not Path(path).is_file():
                bad.append((i, path, "image file not found"))
            elif check_decode:
                try:
                    read_image(path)
                except InvalidInputError as exc:
                    bad.append((i, path, exc.problem))
        if bad:
            raise InvalidInputError(self.root or self.name, _describe_bad_rows(bad, len(self)))

    def to_manifest(self, csv_path: str | os.PathLike[str]) -> Path:
        """Write the set as a manifest CSV; paths under its folder are written relative."""
        out = Path(csv_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        base = os.path.normpath(out.parent.absolute())
        df = self.df.copy()

        def rel(p: str) -> str:
            ap = os.path.normpath(Path(p).absolute())
            inside = os.path.commonpath([ap, base]) == base
            return Path(os.path.relpath(ap, base)).as_posix() if inside else ap

        df["path"] = df["path"].map(rel)
        df.to_csv(out, index=False)
        return out

    @classmethod
    def from_manifest(
        cls,
        csv_path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        check_files: bool = True,
        class_map: Mapping[str, int] | None = None,
        name: str | None = None,
    ) -> ImageSet:
        """Read a manifest CSV (see the module docstring).

        Args:
            csv_path: the manifest.
            root: folder relative paths resolve against, and which no path may leave (``..`` or
                an absolute path elsewhere is refused). Default: the manifest's folder, with no
                containment check.
            check_files: raise if a listed file does not exist.
            class_map: explicit class map (default: sorted labels).
            name: the set's name (default: the manifest's stem).
        """
        src = Path(csv_path)
        df = _read_manifest_csv(src)
        base = Path(os.path.normpath(Path(root if root is not None else src.parent).absolute()))
        paths: list[str] = []
        for i, raw in enumerate(df["path"], start=1):
            if not raw.strip():
                raise InvalidInputError(src, f"row {i}: empty path")
            full = os.path.normpath(base / raw.strip())
            if root is not None and os.path.commonpath([full, str(base)]) != str(base):
                raise InvalidInputError(src, f"row {i}: path {raw!r} leaves the root folder {base}")
            paths.append(full)
        for i, lab in enumerate(df["label"], start=1):
            if not lab.strip():
                raise InvalidInputError(src, f"row {i}: empty label")
        seen: dict[str, int] = {}
        for i, full in enumerate(paths, start=1):
            if full in seen:
                raise InvalidInputError(
                    src, f"rows {seen[full]} and {i} list the same image file {full}"
                )
            seen[full] = i
        if "group" not in df.columns:
            df["group"] = df["path"]
        if "domain" not in df.columns:
            df["domain"] = DEFAULT_DOMAIN
        df["domain"] = df["domain"].replace("", DEFAULT_DOMAIN)
        df["group"] = df["group"].where(df["group"] != "", df["path"])
        df["path"] = paths
        if check_files:
            bad = [(i, p, "image file not found") for i, p in enumerate(paths, 1)]
            bad = [b for b in bad if not Path(b[1]).is_file()]
            if bad:
                raise InvalidInputError(src, _describe_bad_rows(bad, len(paths)))
        out = cls(df, root=base, name=name or src.stem, class_map=class_map)
        logger.info("read %s: %s", src, out)
        return out


def _read_manifest_csv(src: Path) -> pd.DataFrame:
    if not src.is_file():
        raise InvalidInputError(src, "manifest file not found")
    try:
        df = pd.read_csv(src, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InvalidInputError(src, "manifest is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(src, f"cannot read the manifest as CSV ({problem})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise InvalidInputError(
            src,
            f"manifest lacks required column(s) {', '.join(missing)} "
            f"(found: {', '.join(df.columns)}; expected path,label[,domain][,group])",
        )
    if df.empty:
        raise InvalidInputError(src, "manifest has a header but no rows")
    return df


def _describe_bad_rows(bad: list[tuple[int, str, str]], total: int) -> str:
    if len(bad) == 1:
        i, path, problem = bad[0]
        return f"row {i}: {problem}: {path}"
    shown = "; ".join(f"row {i}: {Path(p).name} ({prob})" for i, p, prob in bad[:_MAX_LISTED])
    more = f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    return f"{len(bad)} of {total} image files are unusable: {shown}{more}"


def describe_missing(root: str | os.PathLike[str], names: Sequence[str], total: int) -> str:
    """One-line message for adapters: ``'12 of 100 images not found under ROOT: a, b, ...'``."""
    shown = ", ".join(names[:_MAX_LISTED])
    more = f", and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"{len(names)} of {total} images not found under {root}: {shown}{more}"


class ImageSetDataset(Dataset[tuple[Any, int]]):
    """A torch Dataset over an :class:`ImageSet`.

    Items are ``(image, label)``: ``image`` is a ``(3, H, W)`` float32 tensor in ``[0, 1]``, or
    ``transform`` applied to that tensor (torchvision v2 and MONAI array transforms take it);
    ``label`` is the class index through the set's class map.

    Args:
        image_set: the images.
        transform: optional callable applied to each ``(3, H, W)`` tensor.
        expected_size: optional ``(width, height)`` every image must have.
    """

    def __init__(
        self,
        image_set: ImageSet,
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        expected_size: tuple[int, int] | None = None,
    ) -> None:
        self.image_set = image_set
        self.transform = transform
        self.expected_size = expected_size
        self._paths = image_set.df["path"].tolist()
        self._labels = image_set.labels

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        array = read_image(self._paths[index], expected_size=self.expected_size)
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255.0
        out = self.transform(image) if self.transform is not None else image
        return out, int(self._labels[index])


F = TypeVar("F", bound=Callable[..., object])


class ImageSetRegistry(Registry[ImageSet]):
    """Image-set loaders by name, each with how to recognise its folder or file.

    An adapter registers its loader and a ``recognise(path) -> bool`` test of its layout;
    :func:`detect_format` asks the recognisers in ``priority`` order (lower first, then
    registration order), so a specific layout (HAM10000's metadata file) is asked before a generic
    one (any folder of class sub-folders). Adding an image-set format is one module in
    :mod:`medcl.io.datasets` with its ``@IMAGE_SETS.register(...)`` and its name in
    :data:`medcl.io.datasets.IMAGE_SET_MODULES`.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._recognisers: dict[str, tuple[int, int, Callable[[Path], bool], str]] = {}

    def register(
        self,
        name: str,
        *,
        recognise: Callable[[Path], bool] | None = None,
        describe: str = "",
        priority: int = 50,
    ) -> Callable[[F], F]:
        """Decorator registering a loader under ``name``, optionally with its recogniser.

        Args:
            name: the format name (``format=`` of :func:`load_image_set`, ``data.format``).
            recognise: ``path -> bool``, true when ``path`` has this format's layout; without
                one the format is loaded by name only.
            describe: the layout in words, listed when no format recognises a path.
            priority: lower is asked first by :func:`detect_format`.
        """
        register_loader = super().register(name)

        def decorator(fn: F) -> F:
            register_loader(fn)
            if recognise is not None:
                order = (priority, len(self._recognisers), recognise, describe or name)
                self._recognisers[name] = order
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        """Remove the format ``name`` (tests register temporary formats)."""
        self.get(name)  # ValueError listing the valid names
        del self._builders[name]
        self._recognisers.pop(name, None)

    def _ordered(self) -> list[tuple[str, Callable[[Path], bool], str]]:
        entries = sorted(self._recognisers.items(), key=lambda kv: kv[1][:2])
        return [(name, test, text) for name, (_, _, test, text) in entries]

    def recognise(self, path: Path) -> str | None:
        """The name of the first format (in priority order) whose recogniser accepts ``path``."""
        for name, test, _ in self._ordered():
            if test(path):
                return name
        return None

    def layouts(self) -> str:
        """The recognised layouts in words, in the order they are asked."""
        return "; ".join(text for _, _, text in self._ordered())


IMAGE_SETS = ImageSetRegistry("image set format")


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


@IMAGE_SETS.register(
    "manifest",
    recognise=_is_manifest,
    describe="a manifest .csv (path,label[,domain][,group])",
    priority=0,
)
def load_manifest(path: str | os.PathLike[str], **kwargs: Any) -> ImageSet:
    """:meth:`ImageSet.from_manifest` under the registry name 'manifest'."""
    return ImageSet.from_manifest(path, **kwargs)


def _register_adapters() -> None:
    # the adapters register themselves on import; imported here to avoid an import cycle
    import importlib

    from medcl.io.datasets import IMAGE_SET_MODULES

    for module in IMAGE_SET_MODULES:
        importlib.import_module(module)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The registry name of the layout at ``path``, asking every registered format's recogniser.

    Raises:
        InvalidInputError: nothing is at ``path``, or no registered format recognises it.
    """
    _register_adapters()
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(p, "no such file or folder")
    name = IMAGE_SETS.recognise(p)
    if name is None:
        raise InvalidInputError(
            p, f"not a recognised image set layout; recognised: {IMAGE_SETS.layouts()}"
        )
    return name


def load_image_set(
    path_or_root: str | os.PathLike[str], format: str = "auto", **kwargs: Any
) -> ImageSet:
    """Load an image set by format name ('auto' detects it); ``kwargs`` go to the loader."""
    _register_adapters()
    name = detect_format(path_or_root) if format == "auto" else format
    return IMAGE_SETS.create(name, path_or_root, **kwargs)
