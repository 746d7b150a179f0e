#!/usr/bin/env python
"""Print a config's backbone parameters and multiply-adds per stage. See ``--help``."""
import sys

from resnet_backbones.analysis import main

if __name__ == "__main__":
    sys.exit(main())
