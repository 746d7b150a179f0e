# Mask R-CNN R-50-C4 (configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml): the body up to res4,
# and res5 run on each region in the box head. res5 takes the body's architecture from the body's
# arguments, so one assignment (model.backbone.depth = 101, model.backbone.preset = "resnet_d", ...)
# changes both; the 2048 channels below are res5's output for depth >= 50 (bottleneck blocks).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, MaskRCNNConvUpsampleHead, Res5ROIHeads

from resnet_backbones.modeling import ResNetFamily, ResNetFamilyRes5

from ..data.constants import constants

#: the body's arguments that res5 shares (every one that shapes a block)
_SHARED = ("depth", "norm", "num_groups", "width_per_group", "stride_in_1x1", "res2_out_channels", "preset")

model = L(GeneralizedRCNN)(
    backbone=L(ResNetFamily)(
        depth=50,
        norm="FrozenBN",
        num_groups=1,
        width_per_group=64,
        stride_in_1x1=True,
        res2_out_channels=256,
        preset="",
        freeze_at=2,
        out_features=["res4"],
    ),
    proposal_generator=L(RPN)(
        in_features=["res4"],
        head=L(StandardRPNHead)(in_channels=1024, num_anchors=15),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32, 64, 128, 256, 512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[16],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(12000, 6000),
        post_nms_topk=(2000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(Res5ROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        in_features=["res4"],
        pooler=L(ROIPooler)(output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"),
        res5=L(ResNetFamilyRes5)(**{name: f"${{...backbone.{name}}}" for name in _SHARED}),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=2048, height=1, width=1),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=2048, width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256],
        ),
    ),
    pixel_mean=constants.imagenet_bgr256_mean,
    pixel_std=constants.imagenet_bgr256_std,
    input_format="BGR",
)
