"""The ResNet body: a stem and stages res2..res5 of residual blocks, as a Detectron2 ``Backbone``."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn

from .arch import STAGE_NAMES, ResNetArch
from .blocks import ResidualBlock
from .layers import freeze_module
from .stems import Stem


def make_stage(block_class=ResidualBlock, num_blocks: int = 1, *, in_channels: int, out_channels: int,
               **kwargs) -> List[CNNBlockBase]:
    """Blocks of one stage, as Detectron2's ``ResNet.make_stage``.

    A keyword ending in ``_per_block`` is a list with one value per block, passed to each block
    without the suffix (``stride_per_block=[2, 1, 1]``); other keywords go to every block.
    Only the first block changes the channel count.
    """
    blocks = []
    for i in range(num_blocks):
        block_kwargs = {}
        for key, value in kwargs.items():
            if key.endswith("_per_block"):
                if len(value) != num_blocks:
                    raise ValueError(f"{key} has {len(value)} values for {num_blocks} blocks")
                block_kwargs[key[: -len("_per_block")]] = value[i]
            else:
                block_kwargs[key] = value
        blocks.append(block_class(in_channels, out_channels, **block_kwargs))
        in_channels = out_channels
    return blocks


def build_stage(arch: ResNetArch, index: int, in_channels: int, first_stride: int = None) -> List[CNNBlockBase]:
    """Stage ``index`` (0 = res2) of ``arch``, taking ``in_channels``."""
    num_blocks = arch.blocks_per_stage[index]
    stride = arch.stage_stride(index) if first_stride is None else first_stride
    bottleneck = arch.block_type == "bottleneck"
    return make_stage(
        ResidualBlock,
        num_blocks,
        in_channels=in_channels,
        out_channels=arch.stage_out_channels(index),
        stride_per_block=[stride] + [1] * (num_blocks - 1),
        bottleneck_channels=arch.stage_bottleneck_channels(index) if bottleneck else None,
        num_groups=arch.num_groups,
        stride_in_1x1=arch.stride_in_1x1,
        dilation=arch.stage_dilation(index),
        norm=arch.norm,
    )


class ResNet(Backbone):
    """Stem and residual stages; returns the features named in ``out_features``.

    Args:
        stem: a module with ``out_channels`` and ``stride`` (see :class:`Stem`).
        stages: lists of blocks; stage ``i`` is registered as ``res{i+2}``.
        out_features: names among ``stem``, ``res2``..``res5``. Stages after the last one
            named are not built.
        freeze_at: 0 trains everything, 1 freezes the stem, ``k`` the stem and ``k - 1`` stages;
            frozen parts get no gradients and their BN layers become FrozenBN.
    """

    make_stage = staticmethod(make_stage)

    def __init__(self, stem: nn.Module, stages: Sequence[Sequence[CNNBlockBase]],
                 out_features: Sequence[str], freeze_at: int = 0):
        super().__init__()
        self.stem = stem
        self._out_features = list(out_features)
        stride, channels = stem.stride, stem.out_channels
        self._out_feature_strides: Dict[str, int] = {"stem": stride}
        self._out_feature_channels: Dict[str, int] = {"stem": channels}

        self.stage_names = []
        for name, blocks in zip(STAGE_NAMES, stages):
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            for block in blocks:
                stride *= block.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self.stage_names = tuple(self.stage_names)

        unknown = [f for f in self._out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(f"out_features {unknown} are not produced; built: {list(self._out_feature_strides)}")
        self.freeze(freeze_at)

    @classmethod
    def from_arch(cls, arch: ResNetArch) -> "ResNet":
        stem = Stem(arch.in_channels, arch.stem_out_channels, norm=arch.norm)
        stages, channels = [], stem.out_channels
        for index in range(arch.num_stages):
            stages.append(build_stage(arch, index, channels))
            channels = stages[-1][-1].out_channels
        return cls(stem, stages, arch.out_features, arch.freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an (N, C, H, W) tensor; got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages."""
        if freeze_at >= 1:
            freeze_module(self.stem)
        for index, name in enumerate(self.stage_names, start=2):
            if freeze_at >= index:
                freeze_module(getattr(self, name))
        return self
