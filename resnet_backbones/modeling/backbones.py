"""The builders registered in Detectron2's ``BACKBONE_REGISTRY`` and ``ROI_HEADS_REGISTRY``.

Each reads ``MODEL.RESNETS.*`` through :class:`ResNetArch` (validated, with key names in every
error) and uses Detectron2's own FPN, so a Detectron2 config moves here by changing
``MODEL.BACKBONE.NAME`` (and, for C4 models, ``MODEL.ROI_HEADS.NAME``) alone.
"""
from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from .arch import ConfigError, ResNetArch, check_in_features
from .resnet import ResNet, build_stage


@BACKBONE_REGISTRY.register()
def build_resnet_family_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """A ResNet body with the outputs of ``MODEL.RESNETS.OUT_FEATURES`` (C4 and DC5 models)."""
    return ResNet.from_arch(ResNetArch.from_cfg(cfg, in_channels=input_shape.channels))


def _fpn(cfg, bottom_up: ResNet, top_block: nn.Module) -> FPN:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    check_in_features("MODEL.FPN.IN_FEATURES", in_features, bottom_up.output_shape().keys())
    strides = [bottom_up.output_shape()[f].stride for f in in_features]
    if any(later != 2 * earlier for earlier, later in zip(strides, strides[1:])):
        resnets = cfg.MODEL.RESNETS
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES = {in_features} cannot be combined with MODEL.RESNETS.OUTPUT_STRIDE = "
            f"{resnets.get('OUTPUT_STRIDE', 32)} / MODEL.RESNETS.RES5_DILATION = {resnets.RES5_DILATION}: "
            f"the features have strides {strides}, and an FPN needs each at twice the stride of the one "
            "before; a dilated stage keeps its input's stride (drop it from IN_FEATURES or use output stride 32)")
    fpn = FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if bottom_up.channels_last:
        # the body hands the FPN channels-last features; its convolutions then run in that format too
        fpn.to(memory_format=torch.channels_last)
    return fpn


@BACKBONE_REGISTRY.register()
def build_resnet_family_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN for R-CNN: P2-P5 from ``MODEL.FPN.IN_FEATURES``, P6 by max-pooling P5."""
    return _fpn(cfg, build_resnet_family_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_resnet_family_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN for RetinaNet: P3-P5, and P6-P7 by strided convolutions on C5."""
    bottom_up = build_resnet_family_backbone(cfg, input_shape)
    check_in_features("MODEL.RESNETS.OUT_FEATURES (for RetinaNet's P6/P7)", ["res5"],
                      bottom_up.output_shape().keys())
    res5_channels = bottom_up.output_shape()["res5"].channels
    top_block = LastLevelP6P7(res5_channels, cfg.MODEL.FPN.OUT_CHANNELS)
    return _fpn(cfg, bottom_up, top_block)


@ROI_HEADS_REGISTRY.register()
class ResNetFamilyRes5ROIHeads(Res5ROIHeads):
    """Detectron2's C4 box head, with its res5 stage built from our blocks and config keys (all
    variants, checkpointing and ``NORM_EVAL`` included; a pre-activation res5 ends with its norm)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        arch = ResNetArch.from_cfg(cfg).replace(out_features=("res5",))
        return build_stage(arch, 3, arch.stage_out_channels(2), first_stride=2), arch.stage_out_channels(3)
