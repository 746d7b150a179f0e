"""Winograd convolution: a 3x3, stride-1 convolution computed with fewer multiplications.

Lavin and Gray's minimal filtering (2016), F(2x2, 3x3): the 4 x 4 input tile ``d`` of each 2 x 2
output tile and the 3 x 3 filter ``g`` are transformed so that the tile's output is an
elementwise product in the transformed domain,

    Y = A^T [(G g G^T) * (B^T d B)] A,

and, summed over input channels, each of the 16 transformed positions becomes one matrix product
of (tiles x C_in) by (C_in x C_out): 16 multiplications per 4 outputs where the direct
convolution needs 36 (2.25x fewer). B^T and A^T hold only 0 and +-1, so the input and output
transforms are additions of strided slices, which ``compile_for_inference`` fuses into one pass
each (with the bias, and the ReLU or residual addition that follows).

Where it pays (measured at batch 1, one core of an Intel Xeon, inductor's code against oneDNN's
direct convolution, both compiled with frozen weights and freed memory kept for reuse, as
``compile_for_inference`` does): from 14x14 maps up, the 16 products run near or above the core's
matrix-product peak while the direct convolution runs at it (256 channels at 50x76: 23.4 ms
direct, 15.7 ms transformed; at 200x304: 362 and 256 ms). Below 14x14 the transformed filters
(16/9 of the filter's size) are read for too few tiles and the products are bound by memory (7x7,
512 channels: no faster than direct). With 64 channels the products are small beside the
transforms' passes over the map, which pay only while the map stays in the caches: faster up to
64x64 (56x56: 1.2 ms direct, 1.0 transformed), slower from 100x152 (6.2 and 6.5 ms; 200x304: 24.5
and 33.0 ms). :class:`WinogradConv2d` therefore transforms maps of ``MIN_PIXELS`` pixels (height
x width) and more, up to ``MAX_PIXELS`` unless both channel counts are at least
``WIDE_CHANNELS``, and runs the direct convolution elsewhere. Without kept memory (glibc returns
every buffer over 32 MiB to the system, so each call faults its pages in again) the large
maps' transformed buffers made them slower than direct. F(4x4, 3x3), with 4x fewer
multiplications, made the whole R-50 slower at 224x224 and at 800x1216: inductor's code for its
6x6 input transform costs more than its products save.

:func:`winograd_convolutions` is an inference transform like
:func:`~resnet_backbones.modeling.fold.fold_norms`, applied after folding: every 3x3 stride-1
convolution whose norm is folded or absent (a bottleneck's ``conv2``, a basic block's stride-1
convolutions, the FPN's output convolutions). The filter transform is computed once, in float64.
Float32 only: ``compile_for_inference`` refuses ``dtype=torch.bfloat16`` on a model holding one,
as bfloat16 products of transformed operands lose more than the direct convolution's. Outputs
agree with the direct convolution to float32 rounding (``tests/test_winograd.py``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import DeformConvNorm

__all__ = ["WinogradConv2d", "has_winograd", "winograd_convolutions", "winograd_eligible"]

#: F(2x2, 3x3) with the interpolation points 0, 1, -1 and infinity
INPUT_TRANSFORM = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))      # B^T
FILTER_TRANSFORM = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))        # G
OUTPUT_TRANSFORM = ((1, 1, 1, 0), (0, 1, -1, -1))                                   # A^T
TILE, ALPHA = 2, 4
#: the maps (height x width) on which the transformed convolution runs (see the module doc)
MIN_PIXELS, MAX_PIXELS = 14 * 14, 64 * 64
#: convolutions with at least this many input and output channels are transformed above MAX_PIXELS too
WIDE_CHANNELS = 128


def winograd_eligible(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution :func:`winograd_convolutions` replaces: a plain
    ``nn.Conv2d`` subclass, 3x3, stride 1, dilation 1, one group, zero padding 1, with no norm
    left to apply (folded or absent) and no pre-activation."""
    return (isinstance(module, nn.Conv2d) and not isinstance(module, DeformConvNorm)
            and module.kernel_size == (3, 3) and module.stride == (1, 1) and module.dilation == (1, 1)
            and module.groups == 1 and module.padding == (1, 1) and module.padding_mode == "zeros"
            and getattr(module, "norm", None) is None and not getattr(module, "norm_first", False))


def _signed_sum(terms, coefficients):
    """sum(c * t) for coefficients in {0, 1, -1}."""
    total = None
    for term, coefficient in zip(terms, coefficients):
        if coefficient:
            part = term if coefficient > 0 else -term
            total = part if total is None else total + part
    return total


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1 convolution (and the activation its module held) computed by
    F(2x2, 3x3) on the maps :meth:`transforms` accepts, directly on others (see the module doc).
    It takes the place of the convolution it is made from: ``forward`` as our ``ConvNorm`` and
    Detectron2's ``Conv2d`` have it, ``convolve`` as ``ConvNorm`` has it."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"{type(conv).__name__} {tuple(conv.weight.shape)}, stride {conv.stride}, padding "
                             f"{conv.padding}, groups {conv.groups}: not a 3x3 stride-1 convolution with no norm left")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        #: the largest map (pixels) transformed; None: no bound (WIDE_CHANNELS or more, in and out)
        self.max_pixels = None if min(self.in_channels, self.out_channels) >= WIDE_CHANNELS else MAX_PIXELS
        self.activation = getattr(conv, "activation", None)
        weight = conv.weight.detach()
        g = torch.tensor(FILTER_TRANSFORM, dtype=torch.float64, device=weight.device)
        # (G w G^T) as (16, C_in, C_out): the right operand of the 16 products
        filters = torch.einsum("ia,ocab,jb->ijco", g, weight.double(), g).reshape(ALPHA * ALPHA, *weight.shape[1::-1])
        self.register_buffer("filters", filters.to(weight.dtype).contiguous(), persistent=False)
        self.register_buffer("weight", weight.clone(), persistent=False)
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None, persistent=False)

    def extra_repr(self) -> str:
        largest = " and more" if self.max_pixels is None else f" to {self.max_pixels}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), F(2x2, 3x3) on maps of "
                f"{MIN_PIXELS}{largest} pixels")

    def transforms(self, height: int, width: int) -> bool:
        """Whether a map of ``height`` x ``width`` is computed by F(2x2, 3x3) (else directly)."""
        pixels = height * width
        return MIN_PIXELS <= pixels and (self.max_pixels is None or pixels <= self.max_pixels)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        if not self.transforms(height, width):
            return nn.functional.conv2d(x, self.weight, self.bias, padding=1)
        tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
        # (N, H, W, C) with the convolution's padding, and more to whole tiles
        pixels = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        pixels = nn.functional.pad(pixels, (0, 0, 1, tiles_w * TILE + 1 - width, 1, tiles_h * TILE + 1 - height))
        span_h, span_w = TILE * (tiles_h - 1) + 1, TILE * (tiles_w - 1) + 1
        rows = [pixels[:, a:a + span_h:TILE] for a in range(ALPHA)]              # (N, tiles_h, W', C)
        transformed = []
        for row_coefficients in INPUT_TRANSFORM:
            row = _signed_sum(rows, row_coefficients)
            columns = [row[:, :, b:b + span_w:TILE] for b in range(ALPHA)]        # (N, tiles_h, tiles_w, C)
            transformed.extend(_signed_sum(columns, c).reshape(1, -1, self.in_channels) for c in INPUT_TRANSFORM)
        products = torch.bmm(torch.cat(transformed), self.filters)
        products = products.reshape(ALPHA, ALPHA, batch, tiles_h, tiles_w, self.out_channels)
        partial = [_signed_sum(products, c) for c in OUTPUT_TRANSFORM]            # (4, N, th, tw, K) each
        outputs = torch.stack([torch.stack([_signed_sum(p, c) for c in OUTPUT_TRANSFORM]) for p in partial])
        # (p, q, N, th, tw, K) -> (N, th, p, tw, q, K) -> (N, H, W, K)
        outputs = outputs.permute(2, 3, 0, 4, 1, 5).reshape(batch, tiles_h * TILE, tiles_w * TILE, self.out_channels)
        outputs = outputs[:, :height, :width]
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convolve(x)
        return self.activation(out) if self.activation is not None else out


def winograd_convolutions(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with every eligible convolution
    (:func:`winograd_eligible`) replaced by a :class:`WinogradConv2d`. Fold the norms first
    (:func:`~resnet_backbones.modeling.fold.fold_norms`): a convolution with a norm still to
    apply is left as it is. Float32 models only; raises ``ValueError`` for another dtype."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if winograd_eligible(child):
                if child.weight.dtype != torch.float32:
                    raise ValueError(f"{name + '.' if name else ''}{child_name}: weights in {child.weight.dtype}; "
                                     "winograd_convolutions takes float32 models")
                setattr(module, child_name, WinogradConv2d(child))
    return model


def has_winograd(model: nn.Module) -> bool:
    """Whether ``model`` holds a :class:`WinogradConv2d`."""
    return any(isinstance(m, WinogradConv2d) for m in model.modules())
