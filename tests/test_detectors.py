"""Detectron2's detectors built from our configs train one step and run inference on CPU."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from resnet_backbones.config import load_config
from resnet_backbones.modeling import ResNetFamilyRes5ROIHeads

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
         "MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.WEIGHTS", ""]


def batch(height=128, width=160, with_masks=True):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=generator).float()
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 30.0, 150.0, 120.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    if with_masks:
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        masks[0, 20:90, 10:70] = True
        masks[1, 30:120, 60:150] = True
        instances.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": instances, "height": height, "width": width}]


@pytest.mark.parametrize("config, arch", [
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "GeneralizedRCNN"),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "GeneralizedRCNN"),
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "RetinaNet"),
    ("COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml", "GeneralizedRCNN"),
    ("COCO-InstanceSegmentation/mask_rcnn_convnext_T_FPN_3x.yaml", "GeneralizedRCNN"),
])
def test_detector_trains_one_step_and_infers(config, arch):
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / "configs" / config), SMALL)
    assert cfg.MODEL.BACKBONE.NAME.startswith("build_resnet_family")
    model = build_model(cfg)
    assert type(model).__name__ == arch
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with EventStorage():
        losses = model(batch(with_masks=cfg.MODEL.MASK_ON))
    if cfg.MODEL.MASK_ON:
        assert "loss_mask" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = model.backbone.bottom_up.res5[0].conv1.weight.clone() if hasattr(model.backbone, "bottom_up") \
        else model.backbone.res5[0].conv1.weight.clone()
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = model.backbone.bottom_up.res5[0].conv1.weight if hasattr(model.backbone, "bottom_up") \
        else model.backbone.res5[0].conv1.weight
    assert not torch.equal(before, after), "the backbone did not train"

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": batch()[0]["image"], "height": 256, "width": 320}])
    instances = outputs[0]["instances"]
    assert instances.image_size == (256, 320)
    if cfg.MODEL.MASK_ON and len(instances):
        assert instances.pred_masks.shape[-2:] == (256, 320)


def test_c4_head_builds_res5_from_our_blocks():
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"), SMALL + [
        "MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4"])
    model = build_model(cfg)
    assert isinstance(model.roi_heads, ResNetFamilyRes5ROIHeads)
    res5 = model.roi_heads.res5
    assert [block.stride for block in res5] == [2, 1, 1]
    assert res5[0].conv2.groups == 32 and res5[0].conv2.out_channels == 32 * 4 * 8
    assert not hasattr(model.backbone, "res5")
    model.train()
    with EventStorage():
        assert torch.isfinite(sum(model(batch(with_masks=False)).values()))


MODEL_ZOO_CONFIGS = sorted(str(p.relative_to(ROOT / "configs"))
                           for p in (ROOT / "configs").glob("COCO-*/*.yaml"))


@pytest.mark.parametrize("config", MODEL_ZOO_CONFIGS)
def test_model_zoo_config_matches_its_name_and_builds(config):
    """Names follow Detectron2's model zoo: detector, depth/width, neck, schedule."""
    cfg = load_config(str(ROOT / "configs" / config))
    name = Path(config).stem
    schedule = {"1x": 90000, "2x": 180000, "3x": 270000}[next(s for s in ("1x", "2x", "3x") if f"_{s}" in name)]
    assert cfg.SOLVER.MAX_ITER == schedule and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.MODEL.MASK_ON == name.startswith("mask_rcnn")
    assert cfg.MODEL.META_ARCHITECTURE == ("RetinaNet" if name.startswith("retinanet") else "GeneralizedRCNN")
    depth = 101 if "_101_" in name else 56 if "_convnext_T_" in name else 50  # ConvNeXt-T: 2 + 3 x 18 layers
    assert cfg.MODEL.RESNETS.DEPTH == depth
    if "X_101_32x8d" in name:
        assert (cfg.MODEL.RESNETS.NUM_GROUPS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP) == (32, 8)
    neck = "C4" if "_C4_" in name else "DC5" if "_DC5_" in name else "FPN"
    expected_backbone = {"FPN": "build_resnet_family_retinanet_fpn_backbone" if name.startswith("retinanet")
                         else "build_resnet_family_fpn_backbone", "C4": "build_resnet_family_backbone",
                         "DC5": "build_resnet_family_backbone"}[neck]
    assert cfg.MODEL.BACKBONE.NAME == expected_backbone
    cfg.MODEL.DEVICE = "meta"  # shapes and wiring without the cost of initialising weights
    with torch.device("meta"):
        model = build_model(cfg)
    if neck == "C4":
        assert isinstance(model.roi_heads, ResNetFamilyRes5ROIHeads)
