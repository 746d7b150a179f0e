"""Small building pieces shared by stems and blocks: norms, convolutions, squeeze-and-excitation,
drop path."""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, get_norm as d2_get_norm
from fvcore.nn import weight_init
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import deform_conv2d

NormSpec = Union[str, Callable[[int], nn.Module], None]

#: Norm names accepted by ``MODEL.RESNETS.NORM`` (Detectron2's names; "LN" as Detectron2 main's:
#: LayerNorm over the channels of each pixel, ConvNeXt's norm).
NORM_NAMES = ("BN", "FrozenBN", "SyncBN", "GN", "LN", "")

#: Group count Detectron2 uses for ``GN``.
GN_GROUPS = 32


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each position of an NCHW tensor (timm's ``LayerNorm2d``,
    Detectron2 main's ``LayerNorm``; eps 1e-6 as ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def get_norm(norm: NormSpec, channels: int) -> Optional[nn.Module]:
    """Detectron2's ``get_norm``, except that ``SyncBN`` in a single process is plain BN, and with
    ``LN`` (:class:`LayerNorm2d`), which Detectron2 v0.6 lacks.

    SyncBatchNorm has nothing to synchronise with one process, and on CPU it refuses to run;
    both layers hold the same parameters and buffers, so checkpoints move between them freely.
    """
    if norm == "SyncBN" and _world_size() == 1:
        norm = "BN"
    if norm == "LN":
        return LayerNorm2d(channels)
    return d2_get_norm(norm, channels)


class ConvNorm(nn.Conv2d):
    """A convolution that holds its norm as ``.norm``, so that parameters are named as in
    Detectron2's checkpoints (``res2.0.conv1.weight``, ``res2.0.conv1.norm.weight``) whatever
    the norm and wherever it is applied.

    ``norm_first=False``: ``norm(conv(x))``, the original ResNet.
    ``norm_first=True``: ``conv(relu(norm(x)))``, pre-activation (ResNet v2); the norm then
    sees the input channels.
    ``padding``: ``None`` for 'same' padding; 0 for patch-wise convolutions (kernel = stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm: NormSpec = "BN", norm_first: bool = False,
                 bias: Optional[bool] = None, padding: Optional[int] = None):
        norm_layer = get_norm(norm, in_channels if norm_first else out_channels)
        if bias is None:
            # a following batch or group norm would cancel a bias, a pre-activation's next norm
            # too; a LayerNorm (over each pixel's channels) does not, so ConvNeXt keeps them
            bias = (norm_layer is None and not norm_first) or (isinstance(norm_layer, LayerNorm2d) and not norm_first)
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.norm = norm_layer
        self.norm_first = norm_first
        weight_init.c2_msra_fill(self)

    def preactivate(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(norm(x))``: what a pre-activation convolution convolves."""
        return F.relu(x) if self.norm is None else F.relu_(self.norm(x))

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, followed by the norm unless it is applied first."""
        # nn.Conv2d.forward itself (TorchScript compiles no super() call)
        return self._post_norm(self._conv_forward(x, self.weight, self.bias))

    def _post_norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None or self.norm_first:
            return x
        if not torch.jit.is_scripting():  # a branch of its own: TorchScript then skips compiling it
            if not x.requires_grad and is_fixed_affine(self.norm) and not torch.compiler.is_compiling():
                # Nothing differentiates through the fresh convolution output, so the norm can
                # overwrite it rather than allocate a second activation-sized tensor (on CPU, page
                # faults over every large one); two in-place passes beat addcmul's one broadcast pass.
                scale, shift = fixed_affine(self.norm)
                return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(self.preactivate(x) if self.norm_first else x)


class DeformConvNorm(ConvNorm):
    """A deformable :class:`ConvNorm` through ``torchvision.ops.deform_conv2d`` (CPU and GPU).

    The sampling offsets come from outside (Detectron2 keeps their convolution beside this one,
    as ``conv2_offset``), in Detectron2's layout: ``2 * 9 * offset_groups`` offset channels, then
    for ``modulated`` (DCN v2) ``9 * offset_groups`` mask logits. The mask is
    ``2 * sigmoid(logits)`` rather than Detectron2's ``sigmoid(logits)``, so that zero-initialised
    offset convolutions start out computing exactly the plain convolution (mask 1, not 0.5).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, offset_groups: int = 1,
                 modulated: bool = False, **conv_args):
        super().__init__(in_channels, out_channels, kernel_size, **conv_args)
        self.offset_groups = offset_groups
        self.modulated = modulated

    @property
    def offset_channels(self) -> int:
        """Output channels of the convolution that predicts this one's offsets (and mask)."""
        points = self.kernel_size[0] * self.kernel_size[1] * self.offset_groups
        return (3 if self.modulated else 2) * points

    def convolve(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        mask: Optional[torch.Tensor] = None
        if self.modulated:
            split = self.offset_channels * 2 // 3
            offsets, mask_logits = offsets[:, :split], offsets[:, split:]
            mask = 2 * torch.sigmoid(mask_logits)
        out = deform_conv2d(x, offsets, self.weight, self.bias, stride=self.stride, padding=self.padding,
                            dilation=self.dilation, mask=mask)
        return self._post_norm(out)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.convolve(self.preactivate(x) if self.norm_first else x, offsets)


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
              groups: int = 1, norm: NormSpec = "BN", norm_first: bool = False,
              bias: Optional[bool] = None, padding: Optional[int] = None) -> ConvNorm:
    """A ``kernel_size`` convolution with 'same' padding and its norm (see :class:`ConvNorm`)."""
    return ConvNorm(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups,
                    norm=norm, norm_first=norm_first, bias=bias, padding=padding)


class PatchDownsample(ConvNorm):
    """ConvNeXt's separate downsampling layer: ``conv(norm(x))``, a ``stride x stride`` convolution
    with stride ``stride`` (patches, no padding) and a bias, after a norm and no activation."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 2, norm: NormSpec = "LN"):
        super().__init__(in_channels, out_channels, stride, stride=stride, norm=norm, norm_first=True, bias=True,
                         padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x if self.norm is None else self.norm(x))


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), as timm
    and torchvision round squeeze-and-excitation widths, so that their SE weights fit."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channels rescaled by a gate computed from their means.

    ``fc1``/``fc2`` are 1x1 convolutions with bias, of ``make_divisible(channels * ratio)``
    hidden channels (timm's ``SEModule`` layout).
    """

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        hidden = make_divisible(channels * ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al.): channels rescaled by a gate from a 1D convolution across their means,
    with the kernel size the paper derives from the channel count (timm's ``EcaModule``; its one
    parameter is ``conv.weight``, of shape ``(1, 1, kernel)``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, eca_kernel_size(channels), padding=(eca_kernel_size(channels) - 1) // 2,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv(x.mean((2, 3)).unsqueeze(1))
        return x * torch.sigmoid(gate).view(x.shape[0], x.shape[1], 1, 1)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The odd kernel size ``|log2(channels) + beta| / gamma`` rounds to, at least 3 (the ECA paper)."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


#: ``MODEL.RESNETS.ANTI_ALIAS`` values: none, a 2x2 average pool, a 3x3 binomial blur pool
ANTI_ALIAS_TYPES = ("", "avg", "blur")


class BlurPool2d(nn.Module):
    """Blur, then subsample (Zhang, "Making convolutional networks shift-invariant again"): a
    depthwise 3x3 binomial filter ``[1, 2, 1]^T [1, 2, 1] / 16`` with reflected padding, at
    ``stride`` (timm's ``BlurPool2d``). The filter is a fixed buffer outside the state dict."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        self.register_buffer("filt", (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).contiguous(),
                             persistent=False)
        self.stride = stride
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [1, 1, 1, 1], mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)


def anti_alias_pool(kind: str, channels: int, stride: int = 2) -> nn.Module:
    """The subsampling that follows a convolution made stride 1 by anti-aliasing ``kind``."""
    if kind == "avg":
        return nn.AvgPool2d(stride, stride)
    if kind == "blur":
        return BlurPool2d(channels, stride)
    raise ValueError(f"anti-aliasing {kind!r}: expected one of {ANTI_ALIAS_TYPES[1:]}")


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random ``rate`` of the samples and
    rescale the rest, so that the expectation is unchanged. Identity in eval mode."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def is_fixed_affine(norm: Optional[nn.Module]) -> bool:
    """Whether ``norm`` is a fixed per-channel affine map: a FrozenBN, or a BatchNorm in eval
    mode that normalises with running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (isinstance(norm, _BatchNorm) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None)


def fixed_affine(norm: nn.Module, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``norm(x) == x * scale + shift`` for a norm that
    :func:`is_fixed_affine` accepts, computed in ``dtype`` (default: the statistics' own)."""
    mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
    scale = (var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.to(dtype)
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(dtype)
    return scale, shift


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no gradients, and its BN layers become FrozenBN."""
    for parameter in module.parameters():
        parameter.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def freeze_bn_statistics(module: nn.Module) -> None:
    """Put every BatchNorm in ``module`` in eval mode: its statistics stop updating and are used
    to normalise, while its affine weight and bias keep training (``MODEL.RESNETS.NORM_EVAL``)."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def batch_norm_buffers(module: nn.Module):
    """The running statistics (and step counters) of every BatchNorm in ``module``."""
    return [b for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
