"""Stems: the layers before res2, bringing the image to stride 4."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase

from .layers import NormSpec, conv_norm

STEM_TYPES = ("basic", "deep")


class Stem(CNNBlockBase):
    """A stride-2 convolution stage followed by a 3x3 stride-2 max pool (total stride 4).

    ``stem_type="basic"``: one 7x7 convolution (the paper, Detectron2, torchvision).
    ``stem_type="deep"``: three 3x3 convolutions, the first with stride 2, the inner ones
    ``deep_width`` wide (ResNet-C; timm's ``stem_type='deep'`` with ``deep_width=32``,
    Detectron2's DeepLab stem with ``deep_width = out_channels / 2``).
    Convolutions are named ``conv1``, ``conv2``, ``conv3`` so that Detectron2 and DeepLab
    checkpoints load unchanged.

    ``preact=True`` (ResNet v2): the last convolution has no norm and no ReLU, because the first
    block's pre-activation normalises the stem's output (as in timm's ``ResNetV2``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        *,
        norm: NormSpec = "BN",
        stem_type: str = "basic",
        deep_width: int = 32,
        preact: bool = False,
    ):
        super().__init__(in_channels, out_channels, stride=4)
        if stem_type not in STEM_TYPES:
            raise ValueError(f"stem_type={stem_type!r}: expected one of {STEM_TYPES}")
        self.stem_type = stem_type
        self.preact = preact
        last_norm, last_bias = (None, False) if preact else (norm, None)
        if stem_type == "basic":
            self.conv1 = conv_norm(in_channels, out_channels, 7, stride=2, norm=last_norm, bias=last_bias)
        else:
            self.conv1 = conv_norm(in_channels, deep_width, 3, stride=2, norm=norm)
            self.conv2 = conv_norm(deep_width, deep_width, 3, norm=norm)
            self.conv3 = conv_norm(deep_width, out_channels, 3, norm=last_norm, bias=last_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if hasattr(self, "conv3"):  # resolved while compiling, for TorchScript
            x = self.conv3(F.relu_(self.conv2(F.relu_(x))))
        if not self.preact:
            x = F.relu_(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
