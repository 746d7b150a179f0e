#!/usr/bin/env python
"""Ours against Detectron2's ResNet and pycocotools, in one run (``make bench``).

    python tools/benchmark.py            # the full run (CPU by default, GPU when there is one)
    python tools/benchmark.py --quick    # smaller settings, under 2 minutes on 2 CPU cores
    python tools/benchmark.py --only coco --eval-images 1000

Prints a table of medians and ratios and writes them as JSON (--output). The logic lives in
resnet_backbones.benchmark.
"""
import sys

from resnet_backbones.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
