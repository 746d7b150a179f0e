"""``python -m resnet_backbones``: the registered backbones and what R-50 costs under each."""
from __future__ import annotations

from pathlib import Path

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from .analysis import count_backbone
from .config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BUILDERS = [
    ("build_resnet_family_backbone", "ResNet body: any of stem, res2..res5 (C4, DC5)",
     "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml"),
    ("build_resnet_family_fpn_backbone", "ResNet + FPN for R-CNN: P2-P6 (P6 by max-pool)",
     "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
    ("build_resnet_family_retinanet_fpn_backbone", "ResNet + FPN for RetinaNet: P3-P7",
     "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
]


def main() -> None:
    print(f"{'MODEL.BACKBONE.NAME':<44} {'outputs (stride)':<38} {'R-50 params':>12} {'GMACs@224':>10}")
    for name, description, config in BUILDERS:
        cfg = load_config(str(CONFIGS / config))
        model = build_backbone(cfg, ShapeSpec(channels=3))
        total = count_backbone(model)[-1]
        outputs = ", ".join(f"{k}({v.stride})" for k, v in model.output_shape().items())
        print(f"{name:<44} {outputs:<38} {total.params:>12,} {total.macs / 1e9:>10.2f}")
        print(f"    {description}; example: configs/{config}")


if __name__ == "__main__":
    main()
