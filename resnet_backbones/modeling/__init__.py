"""Model code: layers, stems, blocks, the ResNet body, the registered builders and heads."""
from .arch import DEPTHS, FEATURE_NAMES, STAGE_NAMES, ConfigError, ResNetArch
from .backbones import (
    ResNetFamilyRes5ROIHeads,
    build_resnet_family_backbone,
    build_resnet_family_fpn_backbone,
    build_resnet_family_retinanet_fpn_backbone,
)
from .blocks import ResidualBlock
from .lazy import ResNetFamily, ResNetFamilyRes5
from .resnet import ResNet, build_stage, make_stage
from .segmentation import ResNetFamilyDeepLabV3Head, ResNetFamilyDeepLabV3PlusHead
from .stems import Stem

__all__ = [
    "DEPTHS", "FEATURE_NAMES", "STAGE_NAMES", "ConfigError", "ResNetArch", "ResNet", "ResidualBlock",
    "Stem", "build_stage", "make_stage", "build_resnet_family_backbone", "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone", "ResNetFamilyRes5ROIHeads", "ResNetFamily", "ResNetFamilyRes5",
    "ResNetFamilyDeepLabV3Head", "ResNetFamilyDeepLabV3PlusHead",
]
