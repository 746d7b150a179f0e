"""Small building pieces shared by stems and blocks: normalization and convolution factories."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch.distributed as dist
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm as d2_get_norm
from fvcore.nn import weight_init
from torch import nn

NormSpec = Union[str, Callable[[int], nn.Module], None]

#: Norm names accepted by ``MODEL.RESNETS.NORM`` (Detectron2's names).
NORM_NAMES = ("BN", "FrozenBN", "SyncBN", "GN", "")

#: Group count Detectron2 uses for ``GN``.
GN_GROUPS = 32


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_norm(norm: NormSpec, channels: int) -> Optional[nn.Module]:
    """Detectron2's ``get_norm``, except that ``SyncBN`` in a single process is plain BN.

    SyncBatchNorm has nothing to synchronise with one process, and on CPU it refuses to run;
    both layers hold the same parameters and buffers, so checkpoints move between them freely.
    """
    if norm == "SyncBN" and _world_size() == 1:
        norm = "BN"
    return d2_get_norm(norm, channels)


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm: NormSpec = "BN",
    activation: Optional[Callable] = None,
) -> Conv2d:
    """A bias-free ``kernel_size`` convolution with 'same' padding, followed by ``norm``.

    The norm is held as ``.norm`` of the convolution, which gives the parameter names that
    Detectron2's checkpoints use (``res2.0.conv1.norm.weight``).
    """
    norm_layer = get_norm(norm, out_channels)
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        groups=groups,
        bias=norm_layer is None,
        norm=norm_layer,
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)
    return conv


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no gradients, and its BN layers become FrozenBN."""
    for parameter in module.parameters():
        parameter.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
