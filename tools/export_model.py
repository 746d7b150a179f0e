#!/usr/bin/env python
"""Export a detector built on our backbones, with Detectron2's tools/deploy/export_model.py interface, e.g.

    tools/export_model.py --config-file configs/Demo/mask_rcnn_R_18_FPN_synthetic.yaml \\
        --format onnx --export-method tracing --output output/export MODEL.WEIGHTS output/demo/model_final.pth

--format torchscript|onnx|torch_export (the backbone alone), --export-method tracing|scripting,
--sample-image (default: a generated image), --fold-norms, trailing KEY VALUE overrides. Bad input
exits with status 2 and one "error: ..." line. The logic lives in resnet_backbones.export.
"""
import sys

from resnet_backbones.export import main

if __name__ == "__main__":
    sys.exit(main())
