#!/usr/bin/env python
"""ImageNet pretraining of a ResNet body for Detectron2. See ``--help``.

    python tools/pretrain_imagenet.py --config-file configs/ImageNet/R_50.yaml --data-path DIR --output-dir OUT
    torchrun --nproc-per-node 8 tools/pretrain_imagenet.py --config-file configs/ImageNet/R_50.yaml ...
"""
import sys

from resnet_backbones.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
