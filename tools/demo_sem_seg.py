#!/usr/bin/env python
"""The segmentation demo on a laptop CPU, e.g.

    tools/demo_sem_seg.py --output-dir output/demo_sem_seg

Generates the synthetic shapes and their semantic labels (once), pretrains the R-18 body on object
crops, trains DeepLab v3+ on the synthetic semantic split and writes the mIoU before and after
training to summary.json. The logic lives in resnet_backbones.engine.sem_seg_demo.
"""
import sys

from resnet_backbones.engine.sem_seg_demo import main

if __name__ == "__main__":
    sys.exit(main())
