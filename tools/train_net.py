#!/usr/bin/env python
"""Train or evaluate Faster/Mask R-CNN or RetinaNet with a resnet-backbones backbone, e.g.

    tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    torchrun --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr HOST tools/train_net.py --config-file ...
    tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth

The logic lives in resnet_backbones.engine.train_net.
"""
import sys

from resnet_backbones.engine.train_net import main

if __name__ == "__main__":
    sys.exit(main())
