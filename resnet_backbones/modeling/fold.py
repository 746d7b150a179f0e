"""Inference folding: a convolution followed by a fixed normalization becomes one convolution.

In inference a FrozenBN layer, and a BN layer in eval mode, computes a fixed per-channel affine
map of its input: ``y = (x - mean) / sqrt(var + eps) * weight + bias``. Applied to a
convolution's output it can be merged into the convolution's weights and bias, which removes one
full pass over every feature map (the norm's read and write) from the forward pass:

    W' = W * s[:, None, None, None],  b' = (b - mean) * s + bias,  s = weight / sqrt(var + eps)

:func:`fold_norms` does this for every convolution that holds the norm applied to its output
as ``.norm`` (our :class:`~resnet_backbones.modeling.layers.ConvNorm`, Detectron2's ``Conv2d``
in its FPN and heads) where that norm is a ``FrozenBatchNorm2d`` or an eval-mode
``BatchNorm2d``/``SyncBatchNorm``. Other norms (GN, LayerNorm, a BN in training mode, which
normalizes with batch statistics) are left in place, and so are the norms of pre-activation
convolutions (``norm_first``: the norm and a ReLU come before the convolution, on its input).

Folding is an inference-time transformation applied after the weights are loaded: it does not
touch how checkpoints load (build the model, load the usual unfolded checkpoint, then fold). A
folded model's state dict has ``convX.bias`` and no ``convX.norm.*`` entries, so it is not a
checkpoint for an unfolded model; keep the unfolded one for that.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
from torch import nn

from .layers import fixed_affine, is_fixed_affine

__all__ = ["fold_norms", "fold_conv_norm", "foldable_norm", "folded_convs"]

#: Whether a norm can be folded into the preceding convolution (a FrozenBN, or an eval-mode BN).
foldable_norm = is_fixed_affine


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv2d) -> bool:
    """Folds ``conv.norm`` into ``conv``'s weight and bias in place; returns whether it did.

    ``conv`` is a ``torch.nn.Conv2d`` whose ``norm`` attribute is applied to its output (our
    ``ConvNorm``, Detectron2's ``Conv2d``). After folding, ``conv.norm`` is ``None`` and
    ``conv.bias`` holds the folded bias; the parameters keep their dtype, device and
    ``requires_grad``. A pre-activation convolution (``conv.norm_first``) is left as it is.
    """
    norm = getattr(conv, "norm", None)
    if getattr(conv, "norm_first", False) or not foldable_norm(norm):
        return False
    scale, shift = fixed_affine(norm, torch.float64)
    weight = conv.weight
    folded_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    old_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    folded_bias = old_bias * scale + shift
    conv.weight = nn.Parameter(
        folded_weight.to(weight.dtype).contiguous(memory_format=_memory_format(weight)),
        requires_grad=weight.requires_grad,
    )
    conv.bias = nn.Parameter(folded_bias.to(weight.dtype), requires_grad=weight.requires_grad)
    conv.norm = None
    return True


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) \
            and not tensor.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def fold_norms(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Folds every foldable norm of ``model``'s convolutions into them (see the module doc).

    Args:
        model: any module; its convolutions with a ``norm`` applied to their output (see
            :func:`fold_conv_norm`) are folded where that norm is FrozenBN or eval-mode BN. Call
            ``model.eval()`` first to fold trainable BN layers too (in training mode they
            normalize with batch statistics, so they are not folded).
        inplace: fold ``model`` itself; by default a deep copy is folded and ``model`` is
            unchanged.

    Returns:
        The folded model (``model`` itself with ``inplace=True``). Its outputs equal the
        unfolded model's in eval mode up to float rounding (about 1e-6 relative in float32).
        ``folded_convs(model)`` lists what was folded.
    """
    if not inplace:
        model = copy.deepcopy(model)
    folded: List[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and fold_conv_norm(module):
            folded.append(name)
    model._folded_norms = tuple(folded)  # type: ignore[attr-defined]
    return model


def folded_convs(model: nn.Module) -> Tuple[str, ...]:
    """Names of the convolutions :func:`fold_norms` folded in ``model`` (empty if never folded)."""
    return tuple(getattr(model, "_folded_norms", ()))

