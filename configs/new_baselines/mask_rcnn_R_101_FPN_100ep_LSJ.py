# R-101, 100 epochs (Detectron2 model zoo, its own body: 46.4 box AP, 41.6 mask AP)
from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.bottom_up.depth = 101
