"""ImageNet pretraining of the bodies this package builds, and the path of its weights into a detector.

``tools/pretrain_imagenet.py`` is :func:`resnet_backbones.pretrain.cli.main`; ``pretrain`` is the
function behind it. Checkpoints convert with ``tools/convert_weights.py`` (``--ema`` for the EMA).
"""
from ..data.image_folder import scan_imagenet_layout
from .config import add_pretrain_config, get_pretrain_default_config, load_pretrain_config
from .data import BadImageError
from .engine import CHECKPOINT_NAME, METRICS_NAME, PLOT_NAME, PretrainResult, pretrain
from .model import ImageNetClassifier

__all__ = [
    "BadImageError", "CHECKPOINT_NAME", "ImageNetClassifier", "METRICS_NAME", "PLOT_NAME", "PretrainResult",
    "add_pretrain_config", "get_pretrain_default_config", "load_pretrain_config", "pretrain",
    "scan_imagenet_layout",
]
