# Detectron2's new baseline (configs/new_baselines; its model zoo, with its own R-50: 44.6 box AP, 40.3 mask AP)
# with this package's body: trained from scratch with large-scale jitter at 1024 px, SyncBN in the
# body, the FPN and the heads, a 2-conv RPN head, a 4-conv-1-fc box head, batch 64, 100 COCO epochs.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

# from scratch: random initialisation, every stage trained
train.init_checkpoint = ""
train.amp.enabled = True
model.backbone.bottom_up.freeze_at = 0

# SyncBN: one assignment for the stem and the stages of the body, one for the FPN
model.backbone.bottom_up.norm = model.backbone.norm = "SyncBN"
# the heads may see no region on a GPU, which torch.nn.SyncBatchNorm cannot normalise: Detectron2's
# NaiveSyncBatchNorm weighted by each process's count of samples
model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = "naiveSyncBN_N"

# two 3x3 convolutions in the RPN head, four and one fully connected layer in the box head
model.proposal_generator.head.conv_dims = [-1, -1]
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]

# large-scale jitter: rescale by 0.1-2.0, crop (or pad) to 1024 x 1024, flip
image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.recompute_boxes = True  # the crop cuts boxes; take them from the cut masks
dataloader.train.total_batch_size = 64

# 100 epochs: 184375 iterations x 64 images / 118k images per epoch
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=500 / train.max_iter,
    warmup_factor=0.067,
)
optimizer.lr = 0.1
optimizer.weight_decay = 4e-5
