"""The body and the C4 head's res5 as LazyConfig callables (``detectron2.config.LazyCall``).

In a Detectron2 LazyConfig::

    model.backbone.bottom_up = L(ResNetFamily)(depth=50, preset="resnet_d", norm="SyncBN",
                                               freeze_at=0, out_features=["res2", "res3", "res4", "res5"])

The keywords are exactly :class:`ResNetArch`'s fields, read from the dataclass (a new field is a
new keyword), and :class:`ResNetArch` checks them as it checks the yacs keys; its messages then
name the keyword (or the full key path, for a config check) instead of ``MODEL.RESNETS.*``.
One ``norm`` covers stem and stages, as ``MODEL.RESNETS.NORM`` does.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, Dict, Mapping

from .arch import ConfigError, ResNetArch
from .resnet import ResNet, Stage, build_stage

#: ResNetArch's fields, in their order: the keywords of the callables below
ARCH_FIELDS = tuple(field.name for field in dataclasses.fields(ResNetArch))
#: the fields held as tuples (lists in a config)
_SEQUENCE_FIELDS = tuple(field.name for field in dataclasses.fields(ResNetArch)
                         if isinstance(field.default, tuple))


def arch_from_keywords(keywords: Mapping[str, Any], key_prefix: str = "") -> ResNetArch:
    """The validated :class:`ResNetArch` of LazyConfig keywords; a :class:`ConfigError` names
    ``key_prefix + keyword`` (e.g. ``model.backbone.bottom_up.depth``) and the value."""
    names = {name: key_prefix + name for name in ARCH_FIELDS}
    unknown = [name for name in keywords if name not in names]
    if unknown:
        raise ConfigError(f"{key_prefix}{unknown[0]} = {keywords[unknown[0]]!r} is not allowed: not an "
                          f"argument of the ResNet body; its arguments are ResNetArch's fields {list(ARCH_FIELDS)}")
    fields: Dict[str, Any] = {}
    for name, value in keywords.items():
        if name in _SEQUENCE_FIELDS:
            # LazyConfig hands lists over as omegaconf ListConfig
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ConfigError(f"{names[name]} = {value!r} is not allowed: a list")
            value = tuple(value)
        fields[name] = value
    return ResNetArch.with_preset(fields.pop("preset", ""), key_names=names, **fields)


def _keyword_signature() -> inspect.Signature:
    defaults = ResNetArch()
    return inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                          default=list(value) if isinstance(value := getattr(defaults, name), tuple) else value)
        for name in ARCH_FIELDS])


def ResNetFamily(**keywords) -> ResNet:  # noqa: N802  (named like the class it stands for in a config)
    """The ResNet body of ``ResNetArch(**keywords)`` (with ``preset`` applied), as
    ``build_resnet_family_backbone`` builds it from the yacs keys: same modules, same names."""
    return ResNet.from_arch(arch_from_keywords(keywords))


def ResNetFamilyRes5(**keywords) -> Stage:  # noqa: N802
    """The res5 stage of the C4 box head (``Res5ROIHeads(res5=...)``), as
    ``ResNetFamilyRes5ROIHeads`` builds it: strided, after res4, with every variant of the body."""
    arch = arch_from_keywords(keywords).replace(out_features=("res5",))
    return build_stage(arch, 3, arch.stage_out_channels(2), first_stride=2)


ResNetFamily.__signature__ = _keyword_signature()  # type: ignore[attr-defined]
ResNetFamilyRes5.__signature__ = _keyword_signature()  # type: ignore[attr-defined]
