#!/usr/bin/env python
"""He et al.'s degradation experiment (plain-20/56 vs ResNet-20/56) on handwritten digits. See ``--help``.

    python tools/degradation_experiment.py --output-dir output/degradation
"""
import sys

from resnet_backbones.pretrain.degradation import main

if __name__ == "__main__":
    sys.exit(main())
