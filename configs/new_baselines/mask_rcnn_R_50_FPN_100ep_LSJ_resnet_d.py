# ResNet-D (deep stem, average-pool downsampling), as timm's resnet50d
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.preset = "resnet_d"
