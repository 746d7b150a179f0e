"""Stems: the layers before res2, bringing the image to stride 4."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase
from torch import nn

from .layers import BlurPool2d, NormSpec, conv_norm

STEM_TYPES = ("basic", "deep", "tiered", "patchify", "cifar")
#: what brings the stem from stride 2 to 4: a 3x3 max pool, or ResNet-RS's strided 3x3 convolution
STEM_POOLS = ("max", "conv")


class Stem(CNNBlockBase):
    """A stride-2 convolution stage followed by a 3x3 stride-2 max pool (total stride 4).

    ``stem_type="basic"``: one 7x7 convolution (the paper, Detectron2, torchvision).
    ``stem_type="deep"``: three 3x3 convolutions, the first with stride 2, the inner ones
    ``deep_width`` wide (ResNet-C; timm's ``stem_type='deep'`` with ``deep_width=32``,
    Detectron2's DeepLab stem with ``deep_width = out_channels / 2``).
    ``stem_type="cifar"``: one 3x3 stride-1 convolution and no pool (total stride 1), the stem
    of the paper's CIFAR-10 networks, of pre-activation ResNets and of wide ResNets on 32x32 images.
    ``stem_type="tiered"``: as deep, with the first convolution ``3 * (deep_width // 4)`` wide
    (timm's ``deep_tiered``: 24, 32 and 64 wide in ``resnet50t``).
    ``stem_type="patchify"`` (ConvNeXt, Swin): one 4x4 stride-4 convolution over non-overlapping
    patches and its norm; no activation and no pool.
    Convolutions are named ``conv1``, ``conv2``, ``conv3`` so that Detectron2 and DeepLab
    checkpoints load unchanged.

    ``pool="conv"`` (ResNet-RS): the max pool becomes a 3x3 stride-2 convolution with norm and
    ReLU, ``pool`` (``stem.pool.weight``, ``stem.pool.norm.*``). ``anti_alias`` (timm's
    ``aa_layer``): the max pool is a 2x2 average pool (``"avg"``), or a stride-1 max pool then a
    blur pool (``"blur"``).

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
        pool: str = "max",
        anti_alias: str = "",
    ):
        super().__init__(in_channels, out_channels, stride=1 if stem_type == "cifar" else 4)
        if stem_type not in STEM_TYPES:
            raise ValueError(f"stem_type={stem_type!r}: expected one of {STEM_TYPES}")
        if pool not in STEM_POOLS:
            raise ValueError(f"pool={pool!r}: expected one of {STEM_POOLS}")
        self.stem_type = stem_type
        self.preact = preact
        last_norm, last_bias = (None, False) if preact else (norm, None)
        self.pool_type = "none" if stem_type == "patchify" else pool
        if stem_type == "patchify":
            self.conv1 = conv_norm(in_channels, out_channels, 4, stride=4, norm=last_norm, bias=last_bias, padding=0)
        elif stem_type == "basic":
            self.conv1 = conv_norm(in_channels, out_channels, 7, stride=2, norm=last_norm, bias=last_bias)
        elif stem_type == "cifar":
            self.conv1 = conv_norm(in_channels, out_channels, 3, norm=last_norm, bias=last_bias)
        else:
            first_width = deep_width // 4 * 3 if stem_type == "tiered" else deep_width
            self.conv1 = conv_norm(in_channels, first_width, 3, stride=2, norm=norm)
            self.conv2 = conv_norm(first_width, deep_width, 3, norm=norm)
            self.conv3 = conv_norm(deep_width, out_channels, 3, norm=last_norm, bias=last_bias)
        self.pool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        if stem_type in ("patchify", "cifar"):
            self.pool = nn.Identity()
        elif pool == "conv":
            self.pool = conv_norm(out_channels, out_channels, 3, stride=2, norm=norm)
        elif anti_alias == "avg":
            self.pool = nn.AvgPool2d(2, 2)
        elif anti_alias == "blur":
            self.pool = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1), BlurPool2d(out_channels, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if hasattr(self, "conv3"):  # resolved while compiling, for TorchScript
            x = self.conv3(F.relu_(self.conv2(F.relu_(x))))
        if self.pool_type == "none":  # patchify: the strided convolution and its norm alone
            return x
        if not self.preact:
            x = F.relu_(x)
        x = self.pool(x)
        return F.relu_(x) if self.pool_type == "conv" else x
