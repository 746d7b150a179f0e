# Wide ResNet-50-2, as torchvision's wide_resnet50_2
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.preset = "wide"
