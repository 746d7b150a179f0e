#!/usr/bin/env python
"""COCO mAP of a results file against COCO annotations.

    python tools/evaluate_coco.py instances_val.json dets.json --iou-type bbox --output m.json

Prints COCO's summary numbers (12 for bbox/segm, 10 for keypoints) and per-category AP; with
--output writes them as JSON named and scaled as Detectron2's COCOEvaluator does. Malformed input
exits with status 2 and one "error: ..." line. The logic lives in resnet_backbones.evaluation.
"""

from __future__ import annotations

import argparse
import sys

from resnet_backbones.evaluation import BACKENDS, IOU_TYPES, run_evaluate_coco


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "annotations", help="COCO annotations JSON (with images, annotations, categories)"
    )
    parser.add_argument("results", help="COCO results JSON (a list of detections)")
    parser.add_argument("--iou-type", required=True, choices=IOU_TYPES)
    parser.add_argument("--output", help="write the metrics to this JSON file")
    parser.add_argument(
        "--backend", choices=BACKENDS, help="default: faster-coco-eval when installed"
    )
    parser.add_argument(
        "--max-dets",
        type=int,
        help="max detections per image, the N of maxDets [1, 10, N] (default 100; keypoints: 20)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(
        run_evaluate_coco(
            args.annotations,
            args.results,
            args.iou_type,
            output=args.output,
            backend=args.backend,
            max_dets=args.max_dets,
        )
    )
