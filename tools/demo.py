#!/usr/bin/env python
"""The whole road on a laptop CPU (what `make demo` runs), e.g.

    tools/demo.py --output-dir output/demo

Generates the built-in synthetic dataset (once), trains Mask R-CNN R-18-FPN on it, evaluates COCO
mAP and writes summary.json, predictions/*.png and training_curves.png to the output folder.
The logic lives in resnet_backbones.engine.demo.
"""
import sys

from resnet_backbones.engine.demo import main

if __name__ == "__main__":
    sys.exit(main())
