# Keypoint R-CNN R-50-FPN: the Mask R-CNN FPN model with a person-keypoint head instead of the mask head.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import KRCNNConvDeconvUpsampleHead

from .mask_rcnn_fpn import model

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)

model.roi_heads.update(
    num_classes=1,
    keypoint_in_features=["p2", "p3", "p4", "p5"],
    keypoint_pooler=L(ROIPooler)(
        output_size=14,
        scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    ),
    keypoint_head=L(KRCNNConvDeconvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_keypoints=17,
        conv_dims=[512] * 8,
        loss_normalizer="visible",
    ),
)

# 1500 proposals per image in training (Detectron1 had 2000 per batch of two; 1000 loses box AP)
model.proposal_generator.post_nms_topk = (1500, 1000)
# plain L1 on boxes costs keypoint AP
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
