"""ResNet backbones for Detectron2.

``import resnet_backbones`` registers the builders (``build_resnet_family_backbone``,
``build_resnet_family_fpn_backbone``, ``build_resnet_family_retinanet_fpn_backbone``) and the
``ResNetFamilyRes5ROIHeads`` C4 head in Detectron2's registries.
"""
from . import compat  # noqa: F401  (must precede every detectron2 import)
from .config import add_resnet_backbones_config
from .modeling import ConfigError, ResNet, ResNetArch

__version__ = "0.1.0"
__all__ = ["add_resnet_backbones_config", "ConfigError", "ResNet", "ResNetArch", "__version__"]
