# SE-ResNeXt-50 32x4d, as timm's seresnext50_32x4d
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.preset = "seresnext"
