"""The ImageNet classifier: our ResNet body, global average pooling and a linear layer.

The body is built by the same path as a detector's (``ResNetArch.from_cfg`` then
``ResNet.from_arch``) and held as ``backbone``, so its parameters are named
``backbone.stem.conv1.weight``, ``backbone.res2.0.conv1.norm.weight``...: conversion into a
detector only strips ``backbone.`` and drops ``head.``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..modeling.arch import STAGE_NAMES, ResNetArch
from ..modeling.resnet import ResNet


class ClassifierHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class ImageNetClassifier(nn.Module):
    """Takes images as a detector does (0-255, channels in ``INPUT.FORMAT`` order), returns logits.

    Normalising inside the model, with the config's ``MODEL.PIXEL_MEAN/STD``, makes the body see
    exactly what it will see in a Detectron2 detector with the same keys.
    """

    def __init__(self, arch: ResNetArch, num_classes: int, pixel_mean, pixel_std):
        super().__init__()
        # every stage is an output so that ``backbone(x)`` gives res2..res5 as in a detector;
        # the head reads the last (res5, or res4 of a three-stage CIFAR body)
        stages = STAGE_NAMES[:len(arch.blocks_per_stage)]
        self.last_stage = stages[-1]
        self.backbone = ResNet.from_arch(arch.replace(out_features=stages))
        self.head = ClassifierHead(self.backbone.output_shape()[self.last_stage].channels, num_classes)
        # not persistent: the convention travels in the checkpoint's metadata, not as weights
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "ImageNetClassifier":
        return cls(ResNetArch.from_cfg(cfg), num_classes, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(images))[self.last_stage])
