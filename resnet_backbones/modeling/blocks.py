"""The residual block: one class for basic and bottleneck blocks and all their variants.

Every block follows Detectron2's contract (``CNNBlockBase``): ``in_channels``,
``out_channels`` and ``stride`` attributes, NCHW in and out. Parameter names are Detectron2's
whatever the variant and the norm: ``conv1``..``conv3`` with their norms as ``convK.norm``,
``shortcut`` for the projection, ``conv2_offset`` for a deformable 3x3's offsets, ``se.fc1``,
``se.fc2`` for squeeze-and-excitation, ``eca.conv`` for ECA and ``layer_scale`` for ConvNeXt's
per-channel branch scale.

ConvNeXt's block is this block at the end of the paper's road (depthwise, inverted, depthwise
first, 7x7, GELU, one activation, one norm, layer scale): ``conv1`` the depthwise 7x7 with its
norm, ``conv2``/``conv3`` the two 1x1 layers, so every step of the road is an argument here.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase
from torch import nn

from .layers import (DeformConvNorm, EfficientChannelAttention, NormSpec, SqueezeExcite, anti_alias_pool, conv_norm,
                     drop_path)

#: the paper's shortcut options: A identity with zero-padded channels, B projection where the
#: shape changes, C projection everywhere; "none" the paper's plain network (no shortcut, no sum)
SHORTCUT_TYPES = ("A", "B", "C", "none")
#: activations of the branch (and after the sum): ResNet's ReLU or ConvNeXt's GELU
ACTIVATIONS = ("relu", "gelu")


class ResidualBlock(CNNBlockBase):
    """A residual block: ``relu(branch(x) + shortcut(x))``, or ``branch(x) + shortcut(x)`` with
    pre-activation.

    Args:
        in_channels, out_channels, stride: the block contract.
        bottleneck_channels: width of the 3x3 convolution of a bottleneck block
            (1x1 -> 3x3 -> 1x1). ``None`` makes a basic block (3x3 -> 3x3).
        num_groups: groups of the bottleneck's 3x3 convolution (ResNeXt cardinality).
        stride_in_1x1: put a bottleneck's stride on the first 1x1 (MSRA/Caffe2 weights)
            instead of the 3x3 (torchvision/timm weights, "ResNet v1.5").
        dilation: dilation of the 3x3 convolutions.
        first_dilation: dilation of the block's first 3x3 convolution when it differs from
            ``dilation``: torchvision and timm keep the previous stage's dilation there in the
            first block of a dilated stage. ``None``: ``dilation``.
        norm: normalization of each convolution (a name or a callable of channels).
        shortcut_type: ``"B"`` projection (1x1 conv and norm) where the shape changes, identity
            elsewhere; ``"A"`` no parameters: identity, subsampled by the stride, with zero channels
            appended; ``"C"`` a projection in every block; ``"none"`` no shortcut at all: the block
            is ``relu(branch(x))``, a layer pair of the paper's plain networks.
        avg_down: projection shortcuts average-pool by the stride, then apply a stride-1
            1x1 convolution (ResNet-D), instead of a strided 1x1 convolution that skips 3/4 of
            the input.
        preact: pre-activation (ResNet v2): each convolution is preceded by its norm and a ReLU,
            there is no ReLU after the addition, and projections take the pre-activated input
            (and have no norm).
        se_ratio: squeeze-and-excitation on the branch output, with ``out_channels * se_ratio``
            hidden channels rounded as timm does; 0 for none.
        deform, deform_modulated, deform_num_groups: make the bottleneck's 3x3 deformable
            (DCN v1, or v2 with a modulation mask) with that many offset groups; its offsets
            come from ``conv2_offset``, initialised to zero so the block starts out as the plain one.
        drop_path_rate: probability of dropping the residual branch of a sample in training
            (stochastic depth).
        zero_init_last: start the branch's last norm scale (its last convolution where no norm
            follows it) at zero, so the block starts as the identity (Goyal et al.).
        anti_alias: in a strided block, the 3x3 convolution keeps stride 1 and ``"avg"`` (2x2
            average pool) or ``"blur"`` (blur pool) subsamples its activated output (timm's
            ``aa_layer``); ``""`` for none. Needs the stride on the 3x3.
        eca: ECA channel attention (``eca.conv``) on the branch output instead of SE.
        depthwise: the bottleneck's spatial convolution has one group per channel.
        depthwise_first: the depthwise convolution comes first, on the block's input width, then
            the two 1x1 convolutions (ConvNeXt's "moving up the depthwise conv"); it takes the stride.
        kernel_size: size of the spatial convolutions (ConvNeXt: 7).
        activation: ``"relu"`` or ``"gelu"``.
        single_activation: one activation, before the last convolution, and none after the sum.
        single_norm: only the first convolution has a norm (the others get biases).
        layer_scale: the branch output is multiplied by a learned per-channel scale that starts
            at this value (``layer_scale``, ConvNeXt's gamma); 0 for none.
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
        first_dilation: Optional[int] = None,
        norm: NormSpec = "BN",
        shortcut_type: str = "B",
        avg_down: bool = False,
        preact: bool = False,
        se_ratio: float = 0.0,
        deform: bool = False,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        anti_alias: str = "",
        eca: bool = False,
        depthwise: bool = False,
        depthwise_first: bool = False,
        kernel_size: int = 3,
        activation: str = "relu",
        single_activation: bool = False,
        single_norm: bool = False,
        layer_scale: float = 0.0,
    ):
        super().__init__(in_channels, out_channels, stride)
        if shortcut_type not in SHORTCUT_TYPES:
            raise ValueError(f"shortcut_type={shortcut_type!r}: expected one of {SHORTCUT_TYPES}")
        self.is_bottleneck = bottleneck_channels is not None
        if deform and not self.is_bottleneck:
            raise ValueError("deformable convolutions need a bottleneck block (bottleneck_channels)")
        if (depthwise or depthwise_first) and not self.is_bottleneck:
            raise ValueError("depthwise convolutions need a bottleneck block (bottleneck_channels)")
        if deform and (depthwise or kernel_size != 3):
            raise ValueError("deformable convolutions here are dense 3x3 ones")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
        self.preact = preact
        self.activation = activation
        self.single_activation = single_activation
        # with one activation it precedes the last convolution: a bottleneck's conv1 goes without
        self.activate_conv1 = not (single_activation and self.is_bottleneck)
        self.drop_path_rate = drop_path_rate
        first_dilation = dilation if first_dilation is None else first_dilation
        conv_args = dict(norm=norm, norm_first=preact)
        use_aa = bool(anti_alias) and stride > 1
        if use_aa and (preact or deform or depthwise_first or (stride_in_1x1 and self.is_bottleneck)):
            raise ValueError("anti-aliasing needs a post-activation block with its stride on a plain 3x3")
        conv_stride = 1 if use_aa else stride

        self.has_shortcut = shortcut_type != "none"
        self._build_shortcut(in_channels, out_channels, stride, norm, shortcut_type, avg_down, preact)

        self.conv2_offset = None
        later_args = dict(conv_args, norm=None) if single_norm else conv_args
        if self.is_bottleneck and depthwise_first:
            width = bottleneck_channels
            self.conv1 = conv_norm(in_channels, in_channels, kernel_size, stride=conv_stride, dilation=first_dilation,
                                   groups=in_channels, **conv_args)
            self.conv2 = conv_norm(in_channels, width, 1, **later_args)
            self.conv3 = conv_norm(width, out_channels, 1, **later_args)
            self._branch = ("conv1", "conv2", "conv3")
        elif self.is_bottleneck:
            stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, conv_stride)
            width = bottleneck_channels
            self.conv1 = conv_norm(in_channels, width, 1, stride=stride_1x1, **conv_args)
            if deform:
                self.conv2 = DeformConvNorm(width, width, 3, stride=stride_3x3, dilation=first_dilation,
                                            groups=num_groups, offset_groups=deform_num_groups,
                                            modulated=deform_modulated, **conv_args)
                self.conv2_offset = nn.Conv2d(width, self.conv2.offset_channels, 3, stride=stride_3x3,
                                              padding=first_dilation, dilation=first_dilation)
                nn.init.zeros_(self.conv2_offset.weight)
                nn.init.zeros_(self.conv2_offset.bias)
            else:
                self.conv2 = conv_norm(width, width, kernel_size, stride=stride_3x3, dilation=first_dilation,
                                       groups=width if depthwise else num_groups, **later_args)
            self.conv3 = conv_norm(width, out_channels, 1, **later_args)
            self._branch = ("conv1", "conv2", "conv3")
        else:
            self.conv1 = conv_norm(in_channels, out_channels, kernel_size, stride=conv_stride,
                                   dilation=first_dilation, **conv_args)
            self.conv2 = conv_norm(out_channels, out_channels, kernel_size, dilation=dilation, **later_args)
            self._branch = ("conv1", "conv2")

        # the subsampling of an anti-aliased block comes before the branch convolution of this index
        self.aa_index = (2 if self.is_bottleneck else 1) if use_aa else -1
        self.aa: nn.Module = anti_alias_pool(anti_alias, bottleneck_channels or out_channels) if use_aa else nn.Identity()
        self.se = SqueezeExcite(out_channels, se_ratio) if se_ratio > 0 else None
        if eca and se_ratio > 0:
            raise ValueError("a block has one channel attention: eca or se_ratio")
        self.eca = EfficientChannelAttention(out_channels) if eca else None
        self.layer_scale: Optional[nn.Parameter] = None
        if layer_scale > 0:
            self.layer_scale = nn.Parameter(torch.full((out_channels,), float(layer_scale)))
        if zero_init_last:
            self._zero_init_last()

    def _build_shortcut(self, in_channels, out_channels, stride, norm, shortcut_type, avg_down, preact):
        reshapes = in_channels != out_channels or stride != 1
        project = shortcut_type == "C" or (shortcut_type == "B" and reshapes)
        # parameter-free spatial downsampling of the shortcut's input, before any projection
        self.shortcut_pool: Optional[nn.Module] = None
        if stride > 1 and project and avg_down:
            self.shortcut_pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        elif stride > 1 and shortcut_type == "A":
            self.shortcut_pool = nn.MaxPool2d(1, stride)  # a 1x1 window: plain subsampling
        self.pad_channels = out_channels - in_channels if shortcut_type == "A" else 0
        if self.pad_channels < 0:
            raise ValueError(f"shortcut 'A' pads channels with zeros; it cannot go from {in_channels} "
                             f"to {out_channels} channels")
        self.shortcut = None
        if project:
            projection_stride = 1 if avg_down else stride
            # with pre-activation the projection reads normalised input: no norm of its own
            self.shortcut = conv_norm(in_channels, out_channels, 1, stride=projection_stride,
                                      norm=None if preact else norm, bias=False if preact else None)

    @torch.no_grad()
    def _zero_init_last(self) -> None:
        last = getattr(self, self._branch[-1])
        if last.norm is not None and not last.norm_first:
            last.norm.weight.zero_()
        else:
            last.weight.zero_()

    def _convolve_3x3(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv2_offset is not None:
            return self.conv2.convolve(x, self.conv2_offset(x))
        return self.conv2.convolve(x)

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x) if self.activation == "gelu" else F.relu_(x)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_pool is not None:
            x = self.shortcut_pool(x)
        if self.shortcut is not None:
            x = self.shortcut(x)
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The branch is spelled out, conv by conv, so that TorchScript can compile it: it resolves
        # `self.conv2_offset is not None` and `hasattr(self, "conv3")` while compiling.
        out, shortcut_input = x, x
        if self.preact:
            out = self.conv1.preactivate(out)
            if self.shortcut is not None:
                shortcut_input = out
        out = self.conv1.convolve(out)
        if self.preact:
            out = self.conv2.preactivate(out)
        elif self.activate_conv1:
            out = self._activate(out)
        if self.aa_index == 1:  # anti-aliasing subsamples before the convolution of this index
            out = self.aa(out)
        out = self._convolve_3x3(out)
        if hasattr(self, "conv3"):
            out = self.conv3.preactivate(out) if self.preact else self._activate(out)
            if self.aa_index == 2:
                out = self.aa(out)
            out = self.conv3.convolve(out)
        if self.se is not None:
            out = self.se(out)
        if self.eca is not None:
            out = self.eca(out)
        if self.layer_scale is not None:
            out = out * self.layer_scale.view(1, -1, 1, 1)
        if not self.has_shortcut:  # a plain network's layers: nothing to add
            return out if self.preact or self.single_activation else self._activate(out)
        out = drop_path(out, self.drop_path_rate, self.training)
        shortcut = self._shortcut(shortcut_input)
        if out.dtype == shortcut.dtype:
            out += shortcut  # in place, as Detectron2: no new feature map (4-9% at 800x1216 on CPU)
        else:  # mixed precision that cannot add in place
            out = out + shortcut
        return out if self.preact or self.single_activation else self._activate(out)
