# Deformable 3x3 convolutions in res3-res5 (torchvision ops)
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.deform_on_per_stage = [False, True, True, True]
