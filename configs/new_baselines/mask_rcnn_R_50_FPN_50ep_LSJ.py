# R-50, half the 100-epoch schedule
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.max_iter //= 2
lr_multiplier.scheduler.milestones = [m // 2 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
