# The demo's Mask R-CNN R-18-FPN on the built-in synthetic shapes as a LazyConfig: the model of
# mask_rcnn_R_18_FPN_synthetic.yaml (same parameter names and shapes, so checkpoints cross over)
# and its schedule. BN in the body, the FPN and both heads; AdamW with gradient clipping. (Names
# starting with _ are shorthands, not part of the config.)
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.data.constants import constants as _constants
from ..common.data.synthetic import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

model.backbone.bottom_up.update(depth=18, res2_out_channels=64, stride_in_1x1=False, norm="BN", freeze_at=0)
model.backbone.update(out_channels=64, norm="BN")
model.pixel_mean, model.pixel_std = _constants.imagenet_rgb256_mean, _constants.imagenet_rgb256_std
model.input_format = "RGB"

_rpn = model.proposal_generator
_rpn.head.in_channels = 64
_rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
_rpn.anchor_matcher.thresholds = [0.3, 0.5]  # more positive anchors to learn from in few iterations
_rpn.pre_nms_topk, _rpn.post_nms_topk = (1000, 500), (300, 300)

_heads = model.roi_heads
_heads.num_classes = 5
_heads.batch_size_per_image = 64
_heads.box_head.update(input_shape=L(ShapeSpec)(channels=64, height=7, width=7), conv_dims=[64, 64],
                       fc_dims=[256], conv_norm="BN")
_heads.box_predictor.input_shape = L(ShapeSpec)(channels=256)
_heads.mask_head.update(input_shape=L(ShapeSpec)(channels=64, width=14, height=14), conv_dims=[64, 64, 64],
                        conv_norm="BN")

train.update(max_iter=550, eval_period=110, seed=0)
train.checkpointer.period = 110
train.clip_gradients.update(enabled=True, clip_type="norm", clip_value=5.0)
optimizer.update(lr=0.002, weight_decay=0.05)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[470, 530], num_updates=550),
    warmup_length=100 / 550,
    warmup_factor=0.001,
)
