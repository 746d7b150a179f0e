"""DeepLab v3 and v3+ semantic-segmentation heads, registered in Detectron2's ``SEM_SEG_HEADS_REGISTRY``.

They follow the design of Detectron2's DeepLab project (``projects/DeepLab``) and read its config
keys (``MODEL.SEM_SEG_HEAD.*``, ``INPUT.CROP``), over any backbone that outputs the features
they name, ours included (``build_resnet_family_backbone`` with ``OUTPUT_STRIDE`` 16 or 8 and
``RES5_MULTI_GRID``). Detectron2's own :class:`~detectron2.layers.ASPP` does the atrous pyramid.

* ``ResNetFamilyDeepLabV3Head``: ASPP (a 1x1 branch, three atrous 3x3 branches, image pooling)
  on one feature, then a 1x1 classifier; upsampled by the feature's stride.
* ``ResNetFamilyDeepLabV3PlusHead``: the same ASPP on the coarsest feature, then a decoder that,
  from coarse to fine, projects each finer feature (res2 in the paper: 1x1 to 48 channels),
  concatenates it with the upsampled coarser output and fuses them with two 3x3 convolutions.

With ``INPUT.CROP`` the image pooling averages windows of the crop's size (the project's and
TensorFlow DeepLab's choice: global in training, the same window at test time, which then needs
test features that are a multiple of it); ``ASPP_POOL_OVER_CROP: False`` pools globally instead,
for test images of any shape (ADE20K).

Differences from the project, each so that a config cannot silently mean something else:
``ASPP_DILATIONS: []`` (the default here) follows the ASPP input's stride (6/12/18 at 16,
12/24/36 at 8, as the DeepLab v3 paper doubles them at output stride 8); ``COMMON_STRIDE`` must
equal the stride of the finest input feature; the training loss compares logits upsampled to
the target's own size, so an input that is not a multiple of the stride still trains.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import ASPP, Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .arch import ConfigError, check_in_features

__all__ = [
    "DEFAULT_ASPP_DILATIONS",
    "HARD_PIXEL_FRACTION",
    "LOSS_TYPES",
    "ResNetFamilyDeepLabV3Head",
    "ResNetFamilyDeepLabV3PlusHead",
    "aspp_dilations_for_stride",
    "hard_pixel_mining_loss",
]

#: The DeepLab v3 paper's ASPP rates at output stride 16; other strides scale them.
DEFAULT_ASPP_DILATIONS = (6, 12, 18)
#: Hard pixel mining keeps this fraction of the pixels with the largest loss (DeeperLab; the
#: project's value).
HARD_PIXEL_FRACTION = 0.2
LOSS_TYPES = ("cross_entropy", "hard_pixel_mining")


def _bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def aspp_dilations_for_stride(stride: int) -> Tuple[int, int, int]:
    """The ASPP rates for a feature of ``stride``: (6, 12, 18) at 16, (12, 24, 36) at 8."""
    if stride <= 0 or (16 * DEFAULT_ASPP_DILATIONS[0]) % stride:
        raise ConfigError(f"no ASPP rates follow from a feature stride of {stride}: set "
                          "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS to three rates")
    return tuple(rate * 16 // stride for rate in DEFAULT_ASPP_DILATIONS)  # type: ignore[return-value]


def hard_pixel_mining_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int,
                           fraction: float = HARD_PIXEL_FRACTION) -> torch.Tensor:
    """Mean cross entropy of the ``fraction`` of pixels with the largest loss (DeeperLab).

    As in the project (and TensorFlow DeepLab), ignored pixels count among the candidates with
    a loss of zero, so the number kept is a fraction of all pixels of the batch.
    """
    pixel_losses = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="none").flatten()
    if fraction >= 1.0:
        return pixel_losses.mean()
    kept = max(int(fraction * pixel_losses.numel()), 1)
    return torch.topk(pixel_losses, kept, sorted=False).values.mean()


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> Conv2d:
    conv = Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2,
                  bias=not norm, norm=get_norm(norm, out_channels), activation=F.relu)
    weight_init.c2_xavier_fill(conv)
    return conv


class _DecoderStage(nn.Module):
    """Project a finer feature, concatenate the upsampled coarser output, fuse."""

    def __init__(self, in_channels: int, project_channels: int, coarser_channels: int, out_channels: int,
                 norm: str, depthwise_separable: bool):
        super().__init__()
        self.project = _conv(in_channels, project_channels, 1, norm)
        fused_in = project_channels + coarser_channels
        if depthwise_separable:
            # one 5x5 depthwise-separable convolution sees what two 3x3 ones see (Panoptic-DeepLab)
            self.fuse = DepthwiseSeparableConv2d(fused_in, out_channels, kernel_size=5, padding=2, norm1=norm,
                                                 activation1=F.relu, norm2=norm, activation2=F.relu)
        else:
            self.fuse = nn.Sequential(_conv(fused_in, out_channels, 3, norm), _conv(out_channels, out_channels, 3, norm))

    def forward(self, feature: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        projected = self.project(feature)
        coarser = F.interpolate(coarser, size=projected.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([projected, coarser], dim=1))


class _DeepLabHead(nn.Module):
    """ASPP on the coarsest of ``in_features``, decoder stages over the finer ones, classifier.

    In training ``forward`` returns ``(None, {"loss_sem_seg": ...})``; in inference
    ``(logits at the input's resolution, {})``, as Detectron2's ``SemanticSegmentor`` expects.
    """

    def __init__(self, input_shape: Dict[str, ShapeSpec], *, num_classes: int, aspp_channels: int,
                 aspp_dilations: Sequence[int], aspp_dropout: float, project_channels: Sequence[int],
                 decoder_channels: int, norm: str, ignore_value: int, loss_type: str = "hard_pixel_mining",
                 loss_weight: float = 1.0, pool_kernel_size: Optional[Tuple[int, int]] = None,
                 depthwise_separable: bool = False):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise _bad("MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type, f"one of {list(LOSS_TYPES)}")
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)  # fine to coarse
        self.in_features: List[str] = [name for name, _ in ordered]
        if len(project_channels) != len(ordered) - 1:
            raise ValueError(f"project_channels {list(project_channels)}: need one width per feature but the "
                             f"coarsest of {self.in_features}")
        self.ignore_value = ignore_value
        self.loss_type = loss_type
        self.loss_weight = loss_weight
        self.common_stride = ordered[0][1].stride
        coarsest = ordered[-1][1]
        self.aspp = ASPP(coarsest.channels, aspp_channels, list(aspp_dilations), norm=norm, activation=F.relu,
                         pool_kernel_size=pool_kernel_size, dropout=aspp_dropout,
                         use_depthwise_separable_conv=depthwise_separable)
        # decoder stages from coarse to fine: decoder[i] fuses in_features[-2 - i]
        self.decoder = nn.ModuleList()
        coarser_channels = aspp_channels
        for (_, shape), projected in zip(ordered[-2::-1], project_channels[::-1]):
            self.decoder.append(_DecoderStage(shape.channels, projected, coarser_channels, decoder_channels, norm,
                                              depthwise_separable))
            coarser_channels = decoder_channels
        self.predictor = Conv2d(coarser_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def _arguments_from_cfg(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        in_features = list(head.IN_FEATURES)
        check_in_features("MODEL.SEM_SEG_HEAD.IN_FEATURES", in_features, list(input_shape))
        shapes = {name: input_shape[name] for name in in_features}
        strides = sorted(shape.stride for shape in shapes.values())
        if head.COMMON_STRIDE != strides[0]:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE = {head.COMMON_STRIDE} must be the stride of the finest "
                f"feature of MODEL.SEM_SEG_HEAD.IN_FEATURES = {in_features} (strides {strides}), {strides[0]}: "
                "the logits are upsampled by it")
        aspp_stride = strides[-1]
        dilations = list(head.ASPP_DILATIONS) or list(aspp_dilations_for_stride(aspp_stride))
        if len(dilations) != 3 or any(int(d) != d or d < 1 for d in dilations):
            raise _bad("MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", list(head.ASPP_DILATIONS),
                       "[] (follow the feature's stride) or three positive integers")
        pool_kernel_size = None
        if cfg.INPUT.CROP.ENABLED and head.ASPP_POOL_OVER_CROP:
            # Pool over the whole training crop, and over windows of that size at test time
            if cfg.INPUT.CROP.TYPE != "absolute":
                raise ConfigError(f"INPUT.CROP.TYPE = {cfg.INPUT.CROP.TYPE!r} cannot be combined with a DeepLab "
                                  "head: its image pooling needs a fixed crop size ('absolute')")
            crop = tuple(cfg.INPUT.CROP.SIZE)
            if len(crop) != 2 or crop[0] % aspp_stride or crop[1] % aspp_stride:
                raise ConfigError(f"INPUT.CROP.SIZE = {list(crop)} must be (height, width), each a multiple of the "
                                  f"ASPP input's stride {aspp_stride}")
            pool_kernel_size = (crop[0] // aspp_stride, crop[1] // aspp_stride)
        return dict(
            input_shape=shapes, num_classes=head.NUM_CLASSES, aspp_channels=head.ASPP_CHANNELS,
            aspp_dilations=dilations, aspp_dropout=head.ASPP_DROPOUT, project_channels=[],
            decoder_channels=head.CONVS_DIM, norm=head.NORM, ignore_value=head.IGNORE_VALUE,
            loss_type=head.LOSS_TYPE, loss_weight=head.LOSS_WEIGHT, pool_kernel_size=pool_kernel_size,
            depthwise_separable=head.USE_DEPTHWISE_SEPARABLE_CONV)

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the finest input feature's resolution."""
        x = self.aspp(features[self.in_features[-1]])
        for stage, name in zip(self.decoder, self.in_features[-2::-1]):
            x = stage(features[name], x)
        return self.predictor(x)

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits = self.layers(features)
        if self.training:
            return None, self.losses(logits, targets)
        return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False), {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if self.loss_type == "hard_pixel_mining":
            loss = hard_pixel_mining_loss(logits, targets, self.ignore_value)
        else:
            loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}


@SEM_SEG_HEADS_REGISTRY.register()
class ResNetFamilyDeepLabV3Head(_DeepLabHead):
    """DeepLab v3: ASPP on the one feature of ``MODEL.SEM_SEG_HEAD.IN_FEATURES``, then the classifier.

    ``ASPP_CHANNELS`` is the width of every branch; ``CONVS_DIM`` has no part in it.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        if len(in_features) != 1:
            raise _bad("MODEL.SEM_SEG_HEAD.IN_FEATURES", in_features,
                       "one feature for DeepLab v3 (e.g. ['res5']); the v3+ head fuses several")
        super().__init__(**self._arguments_from_cfg(cfg, input_shape))


@SEM_SEG_HEADS_REGISTRY.register()
class ResNetFamilyDeepLabV3PlusHead(_DeepLabHead):
    """DeepLab v3+: ASPP on the coarsest feature, a decoder over the finer ones (``['res2', 'res5']``).

    ``PROJECT_FEATURES`` names the finer features and ``PROJECT_CHANNELS`` the width of each one's
    1x1 projection, in the same order (``['res2']``, ``[48]``); ``CONVS_DIM`` is the decoder's width.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_features = list(head.IN_FEATURES)
        if len(in_features) < 2:
            raise _bad("MODEL.SEM_SEG_HEAD.IN_FEATURES", in_features,
                       "at least two features for DeepLab v3+ (e.g. ['res2', 'res5']); one is DeepLab v3")
        arguments = self._arguments_from_cfg(cfg, input_shape)
        shapes = arguments["input_shape"]
        finer = sorted(shapes, key=lambda name: shapes[name].stride)[:-1]
        project_features, project_channels = list(head.PROJECT_FEATURES), list(head.PROJECT_CHANNELS)
        if sorted(project_features) != sorted(finer) or len(project_channels) != len(project_features):
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = {project_features} and PROJECT_CHANNELS = "
                f"{project_channels} must name and size the features of MODEL.SEM_SEG_HEAD.IN_FEATURES = "
                f"{in_features} that the decoder projects (all but the coarsest: {finer}), one width each")
        width = dict(zip(project_features, project_channels))
        arguments["project_channels"] = [width[name] for name in finer]
        super().__init__(**arguments)
