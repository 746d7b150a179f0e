"""timm's ResNet family by name: which models convert, and what their weights cannot tell.

Everything about a timm ResNet but one thing shows in its tensors (depth, widths, stem, pool, SE
or ECA...). Anti-aliased downsampling (timm's ``aa_layer``) has no parameters: ``resnetaa50d``
holds exactly the tensors of ``resnet50d``, ``resnetblur50`` those of ``resnet50``. So naming the
model (``--timm-model``, or the ``arch`` timm's train.py stores in its checkpoints, or the
``architecture`` of a timm hub ``config.json`` beside the weights) is the only way to get them,
and converting such tensors without a name warns, naming the anti-aliased twins.

The lists are checked against timm itself by tests/test_timm_zoo.py.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..modeling.arch import ResNetArch

_D = dict(stem_type="deep", stem_width=32, stem_out_channels=64, avg_down=True)

#: anti-aliased timm models -> (MODEL.RESNETS.ANTI_ALIAS, the fields of their tensors)
ANTI_ALIASED: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "resnetaa34d": ("avg", dict(depth=34, res2_out_channels=64, **_D)),
    "resnetaa50": ("avg", dict(depth=50)),
    "resnetaa50d": ("avg", dict(depth=50, **_D)),
    "resnetaa101d": ("avg", dict(depth=101, **_D)),
    "seresnetaa50d": ("avg", dict(depth=50, se_ratio=0.0625, **_D)),
    "seresnextaa101d_32x8d": ("avg", dict(depth=101, num_groups=32, width_per_group=8, se_ratio=0.0625, **_D)),
    "seresnextaa201d_32x8d": ("avg", dict(depth=203, num_blocks=(3, 24, 36, 4), num_groups=32, width_per_group=8,
                                          se_ratio=0.0625, **dict(_D, stem_width=64, stem_out_channels=128))),
    "resnetblur18": ("blur", dict(depth=18, res2_out_channels=64)),
    "resnetblur50": ("blur", dict(depth=50)),
    "resnetblur50d": ("blur", dict(depth=50, **_D)),
    "resnetblur101d": ("blur", dict(depth=101, **_D)),
}

#: timm ResNet models (timm.models.resnet and resnetv2) that convert exactly
CONVERTS: Tuple[str, ...] = (
    "resnet10t", "resnet14t", "resnet18", "resnet18d", "resnet26", "resnet26d", "resnet26t", "resnet34",
    "resnet34d", "resnet50", "resnet50c", "resnet50d", "resnet50s", "resnet50t", "resnet50_gn", "resnet101",
    "resnet101c", "resnet101d", "resnet101s", "resnet152", "resnet152c", "resnet152d", "resnet152s", "resnet200",
    "resnet200d", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext50d_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d",
    "resnext101_32x32d", "resnext101_64x4d",
    "seresnet18", "seresnet34", "seresnet50", "seresnet50t", "seresnet101", "seresnet152", "seresnet152d",
    "seresnet200d", "seresnet269d", "seresnext26d_32x4d", "seresnext26t_32x4d", "seresnext50_32x4d",
    "seresnext101_32x4d", "seresnext101_32x8d", "seresnext101_64x4d", "seresnext101d_32x8d",
    "ecaresnet26t", "ecaresnet50d", "ecaresnet50t", "ecaresnetlight", "ecaresnet101d", "ecaresnet200d",
    "ecaresnet269d", "ecaresnext26t_32x4d", "ecaresnext50t_32x4d",
    "resnetrs50", "resnetrs101", "resnetrs152", "resnetrs200", "resnetrs270", "resnetrs350", "resnetrs420",
    "resnetv2_18", "resnetv2_18d", "resnetv2_34", "resnetv2_34d", "resnetv2_50", "resnetv2_50d", "resnetv2_50t",
    "resnetv2_50d_gn", "resnetv2_101", "resnetv2_101d", "resnetv2_152", "resnetv2_152d",
) + tuple(ANTI_ALIASED)


def timm_anti_alias(name: str, source: str = "--timm-model") -> str:
    """``MODEL.RESNETS.ANTI_ALIAS`` of the timm model ``name`` (``""`` for the plain ones)."""
    if name in ANTI_ALIASED:
        return ANTI_ALIASED[name][0]
    if name not in CONVERTS:
        raise ValueError(f"{source} {name!r} is not a timm ResNet this package converts (README "
                         "'Weights from timm' lists them)")
    return ""


def _tensor_items(arch: ResNetArch) -> List[Tuple[str, Any]]:
    """What an arch's tensors show: its weight keys but anti-aliasing, norm and stride placement."""
    ignored = ("MODEL.RESNETS.ANTI_ALIAS", "MODEL.RESNETS.NORM", "MODEL.RESNETS.STRIDE_IN_1X1")
    return [(k, v) for k, v in arch.weight_config_items() if k not in ignored]


def anti_aliased_twins(arch: ResNetArch) -> List[str]:
    """The anti-aliased timm models whose tensors are exactly those of ``arch``."""
    items = _tensor_items(arch.replace(anti_alias="", stride_in_1x1=False))
    return [name for name, (_, fields) in ANTI_ALIASED.items()
            if _tensor_items(ResNetArch(stride_in_1x1=False, **fields).validated()) == items]


def check_named_model(arch: ResNetArch, name: str, source: str) -> None:
    """Raise when the tensors are not those of the anti-aliased model ``name``."""
    if name in ANTI_ALIASED and name not in anti_aliased_twins(arch):
        raise ValueError(f"{source} {name!r}: these weights are not that model's; they describe "
                         f"{dict(_tensor_items(arch))}")


def recorded_timm_model(recorded: Optional[str]) -> Optional[str]:
    """A recorded architecture name, when it names a timm ResNet this package knows."""
    return recorded if recorded in CONVERTS else None
