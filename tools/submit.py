#!/usr/bin/env python
"""Submit training to SLURM through submitit (see ``--help``), e.g.

    tools/submit.py --nodes 2 --gpus-per-node 8 --partition gpu --time 72:00:00 --output-dir out/mask_rcnn \
        train_net --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml
    tools/submit.py --gpus-per-node 8 --output-dir out/r50 --dry-run pretrain_imagenet \
        --config-file configs/ImageNet/R_50.yaml --data-path /data/imagenet

The logic lives in resnet_backbones.engine.slurm.
"""
import sys

from resnet_backbones.engine.slurm import main

if __name__ == "__main__":
    sys.exit(main())
