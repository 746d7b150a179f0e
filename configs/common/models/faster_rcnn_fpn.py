# Faster R-CNN R-50-FPN (configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml): Mask R-CNN without its mask head.
from .mask_rcnn_fpn import model

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)
