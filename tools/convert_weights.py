#!/usr/bin/env python
"""Convert ResNet weights into a Detectron2-loadable file. See ``--help``."""
import sys

from resnet_backbones.weights.cli import main

if __name__ == "__main__":
    sys.exit(main())
