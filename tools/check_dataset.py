#!/usr/bin/env python
"""Check a COCO-format dataset (or an ImageNet folder) before training, e.g.

    tools/check_dataset.py annotations/train.json images/train
    tools/check_dataset.py annotations/train.json images/train --fix annotations/train_fixed.json
    tools/check_dataset.py --imagenet /data/imagenet

The logic lives in resnet_backbones.data.checks.
"""
import sys

from resnet_backbones.data.checks import main

if __name__ == "__main__":
    sys.exit(main())
