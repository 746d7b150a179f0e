"""The residual block: one class for basic and bottleneck blocks and their variants.

Every block follows Detectron2's contract (``CNNBlockBase``): ``in_channels``,
``out_channels`` and ``stride`` attributes, NCHW in and out. Parameter names are Detectron2's:
``conv1``..``conv3`` with their norms as ``convK.norm``, and ``shortcut`` for the projection.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from detectron2.layers import CNNBlockBase

from .layers import NormSpec, conv_norm


class ResidualBlock(CNNBlockBase):
    """A residual block: ``relu(branch(x) + shortcut(x))``.

    Args:
        in_channels, out_channels, stride: the block contract.
        bottleneck_channels: width of the 3x3 convolution of a bottleneck block
            (1x1 -> 3x3 -> 1x1). ``None`` makes a basic block (3x3 -> 3x3).
        num_groups: groups of the bottleneck's 3x3 convolution (ResNeXt cardinality).
        stride_in_1x1: put a bottleneck's stride on the first 1x1 (MSRA/Caffe2 weights)
            instead of the 3x3 (torchvision/timm weights, "ResNet v1.5").
        dilation: dilation of the 3x3 convolutions.
        norm: normalization after each convolution (a name or a callable of channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        bottleneck_channels: Optional[int] = None,
        num_groups: int = 1,
        stride_in_1x1: bool = False,
        dilation: int = 1,
        norm: NormSpec = "BN",
    ):
        super().__init__(in_channels, out_channels, stride)
        self.is_bottleneck = bottleneck_channels is not None

        if in_channels != out_channels or stride != 1:
            self.shortcut = conv_norm(in_channels, out_channels, 1, stride=stride, norm=norm)
        else:
            self.shortcut = None

        if self.is_bottleneck:
            stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
            width = bottleneck_channels
            self.conv1 = conv_norm(in_channels, width, 1, stride=stride_1x1, norm=norm)
            self.conv2 = conv_norm(
                width, width, 3, stride=stride_3x3, dilation=dilation, groups=num_groups, norm=norm
            )
            self.conv3 = conv_norm(width, out_channels, 1, norm=norm)
            self._branch = ("conv1", "conv2", "conv3")
        else:
            self.conv1 = conv_norm(in_channels, out_channels, 3, stride=stride, dilation=dilation, norm=norm)
            self.conv2 = conv_norm(out_channels, out_channels, 3, dilation=dilation, norm=norm)
            self._branch = ("conv1", "conv2")

    def forward(self, x):
        out = x
        last = len(self._branch) - 1
        for i, name in enumerate(self._branch):
            out = getattr(self, name)(out)
            if i < last:
                out = F.relu_(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)
