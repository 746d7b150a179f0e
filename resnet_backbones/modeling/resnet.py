"""The ResNet body: a stem and stages res2..res5 of residual blocks, as a Detectron2 ``Backbone``."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn
from torch.utils.checkpoint import checkpoint

from .arch import STAGE_NAMES, ResNetArch
from .blocks import ResidualBlock
from .layers import PatchDownsample, batch_norm_buffers, freeze_bn_statistics, freeze_module, get_norm
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


class Stage(nn.Module):
    """The blocks of one stage, named ``0``, ``1``... as in Detectron2's ``nn.Sequential`` stages,
    and indexable like one.

    Args:
        blocks: the residual blocks, run in order.
        final_norm: a norm applied, with a ReLU, after the last block: a pre-activation network
            ends with one, held as ``<stage>.norm``.
        checkpoint: in training, keep only the stage's input and recompute its activations in
            the backward pass (less memory, one more forward; gradients are unchanged).
        norm_eval: keep every BatchNorm of the stage in eval mode, also when the model trains.
        downsample: a layer run before the blocks, with a ``stride`` (ConvNeXt's separate
            downsampling, ``<stage>.downsample``).
    """

    def __init__(self, blocks: Sequence[nn.Module], *, final_norm: Optional[nn.Module] = None,
                 checkpoint: bool = False, norm_eval: bool = False, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.downsample = downsample
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.num_blocks = len(blocks)
        self.norm = final_norm
        self.checkpoint = checkpoint
        self.norm_eval = norm_eval

    __jit_unused_properties__ = ["stride"]

    def __len__(self) -> int:
        return self.num_blocks

    @property
    def stride(self) -> int:
        """The stage's stride: its downsampling layer's and its blocks'."""
        stride = self.downsample.stride[0] if self.downsample is not None else 1
        for block in self:
            stride *= block.stride
        return stride

    def __iter__(self) -> Iterator[nn.Module]:
        return (getattr(self, str(i)) for i in range(self.num_blocks))

    def __getitem__(self, index: int) -> nn.Module:
        if not -self.num_blocks <= index < self.num_blocks:
            raise IndexError(f"block {index} of a stage of {self.num_blocks}")
        return getattr(self, str(index % self.num_blocks))

    def train(self, mode: bool = True) -> "Stage":
        super().train(mode)
        if self.norm_eval:
            freeze_bn_statistics(self)
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        # named_children, not getattr(self, str(i)): TorchScript unrolls it, with constant names
        for name, block in self.named_children():
            if name != "norm" and name != "downsample":
                x = block(x)
        if self.norm is not None:
            x = F.relu_(self.norm(x))
        return x

    def __prepare_scriptable__(self) -> "Stage":
        if self.checkpoint and self.training:
            raise ValueError(_CHECKPOINT_NOT_SCRIPTABLE)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript cannot compile checkpointing: scripted stages do not
            if self.checkpoint:
                return run_checkpointed(self._run, x, self)
        return self._run(x)


_CHECKPOINT_NOT_SCRIPTABLE = (
    "torch.jit.script cannot express activation checkpointing (MODEL.RESNETS.CHECKPOINT_STAGES), which "
    "applies in training: script the model in eval mode, or build it without checkpointing")


def run_checkpointed(function, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``function(x)``; when ``module`` trains with gradients on, keeping only ``x`` for the
    backward pass, which recomputes the rest (in eval mode or under ``no_grad`` there is no
    backward pass to save memory for).

    The recomputation runs ``module``'s BatchNorms in training mode a second time; their running
    statistics are restored afterwards so that they advance once per step, as without
    checkpointing.
    """
    if not (module.training and torch.is_grad_enabled()):
        return function(x)
    if torch.compiler.is_compiling():
        # compiled graphs apply buffer updates once, outside the recomputed region
        return checkpoint(function, x, use_reentrant=False)

    @contextlib.contextmanager
    def restore_statistics():
        buffers = batch_norm_buffers(module)
        saved = [b.clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)

    return checkpoint(function, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), restore_statistics()))


def build_stage(arch: ResNetArch, index: int, in_channels: int, first_stride: Optional[int] = None) -> Stage:
    """Stage ``index`` (0 = res2) of ``arch``, taking ``in_channels``."""
    num_blocks = arch.blocks_per_stage[index]
    stride = arch.stage_stride(index) if first_stride is None else first_stride
    downsample = None
    if arch.stage_downsample(index):
        downsample = PatchDownsample(in_channels, arch.stage_out_channels(index), stride=stride, norm=arch.norm)
        in_channels, stride = arch.stage_out_channels(index), 1
    bottleneck = arch.block_type == "bottleneck"
    dilations = arch.block_dilations(index)
    blocks = make_stage(
        ResidualBlock,
        num_blocks,
        in_channels=in_channels,
        out_channels=arch.stage_out_channels(index),
        stride_per_block=[stride] + [1] * (num_blocks - 1),
        bottleneck_channels=arch.stage_bottleneck_channels(index) if bottleneck else None,
        num_groups=arch.num_groups,
        stride_in_1x1=arch.stride_in_1x1,
        first_dilation_per_block=[first for first, _ in dilations],
        dilation_per_block=[dilation for _, dilation in dilations],
        norm=arch.norm,
        shortcut_type=arch.shortcut,
        avg_down=arch.avg_down,
        preact=arch.preact,
        se_ratio=arch.se_ratio,
        deform=arch.deform_on_per_stage[index],
        deform_modulated=arch.deform_modulated,
        deform_num_groups=arch.deform_num_groups,
        drop_path_rate_per_block=arch.block_drop_path_rates(index),
        zero_init_last=arch.zero_init_residual,
        anti_alias=arch.anti_alias,
        eca=arch.eca,
        depthwise=arch.depthwise,
        depthwise_first=arch.depthwise_first,
        kernel_size=arch.kernel_size,
        activation=arch.activation,
        single_activation=arch.single_activation,
        single_norm=arch.single_norm,
        layer_scale=arch.layer_scale,
    )
    # a pre-activation network's outputs are un-normalised sums; its last stage gets the norm
    last = index == len(arch.blocks_per_stage) - 1
    final_norm = get_norm(arch.norm, arch.stage_out_channels(index)) if arch.preact and last else None
    stage = Stage(blocks, final_norm=final_norm, checkpoint=STAGE_NAMES[index] in arch.checkpoint_stages,
                  norm_eval=arch.norm_eval, downsample=downsample)
    if arch.channels_last:
        stage.to(memory_format=torch.channels_last)
    return stage


class ResNet(Backbone):
    """Stem and residual stages; returns the features named in ``out_features``.

    Args:
        stem: a module with ``out_channels`` and ``stride`` (see :class:`Stem`).
        stages: :class:`Stage` objects or lists of blocks; stage ``i`` is registered as ``res{i+2}``.
        out_features: names among ``stem``, ``res2``..``res5``. Stages after the last one
            named are not built.
        freeze_at: 0 trains everything, 1 freezes the stem, ``k`` the stem and ``k - 1`` stages;
            frozen parts get no gradients and their BN layers become FrozenBN.
        norm_eval: keep the stem's BatchNorm in eval mode also in training (stages carry their own).
        channels_last: hold the weights and run in ``torch.channels_last`` memory format,
            converting the input.
        checkpoint_stem: in training, keep only the stem's input and recompute its activations
            in the backward pass (stages carry their own switch).
    """

    make_stage = staticmethod(make_stage)

    def __init__(self, stem: nn.Module, stages: Sequence[Union[Stage, Sequence[CNNBlockBase]]],
                 out_features: Sequence[str], freeze_at: int = 0, *, norm_eval: bool = False,
                 channels_last: bool = False, checkpoint_stem: bool = False):
        super().__init__()
        self.stem = stem
        self.checkpoint_stem = checkpoint_stem
        self._out_features = list(out_features)
        self.norm_eval = norm_eval
        self.channels_last = channels_last
        stride, channels = stem.stride, stem.out_channels
        self._out_feature_strides: Dict[str, int] = {"stem": stride}
        self._out_feature_channels: Dict[str, int] = {"stem": channels}

        self.stage_names = []
        for name, blocks in zip(STAGE_NAMES, stages):
            stage = blocks if isinstance(blocks, Stage) else Stage(list(blocks))
            self.add_module(name, stage)
            self.stage_names.append(name)
            stride *= stage.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = stage[-1].out_channels
        self.stage_names = tuple(self.stage_names)

        unknown = [f for f in self._out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(f"out_features {unknown} are not produced; built: {list(self._out_feature_strides)}")
        self.freeze(freeze_at)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_arch(cls, arch: ResNetArch) -> "ResNet":
        stem = Stem(arch.in_channels, arch.stem_out_channels, norm=arch.norm, stem_type=arch.stem_type,
                    deep_width=arch.stem_width, preact=arch.preact, pool=arch.stem_pool,
                    anti_alias=arch.anti_alias)
        stages, channels = [], stem.out_channels
        for index in range(arch.num_stages):
            stages.append(build_stage(arch, index, channels))
            channels = stages[-1][-1].out_channels
        return cls(stem, stages, arch.out_features, arch.freeze_at, norm_eval=arch.norm_eval,
                   channels_last=arch.channels_last, checkpoint_stem="stem" in arch.checkpoint_stages)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if self.norm_eval:
            freeze_bn_statistics(self.stem)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an (N, C, H, W) tensor; got shape {list(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: Dict[str, torch.Tensor] = {}
        x = self._run_stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        # named_children, not getattr(self, name): TorchScript unrolls it, with constant names
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
                if name in self._out_features:
                    outputs[name] = x
        return outputs

    def __prepare_scriptable__(self) -> "ResNet":
        if self.checkpoint_stem and self.training:
            raise ValueError(_CHECKPOINT_NOT_SCRIPTABLE)
        return self

    def _run_stem(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript cannot compile checkpointing: a scripted stem does not
            if self.checkpoint_stem:
                return run_checkpointed(self.stem, x, self.stem)
        return self.stem(x)

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
