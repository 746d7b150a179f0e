# Detectron2's DeepLab stem: three 3x3 convolutions 64, 64, 128 wide
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.preset = "deeplab_stem"
