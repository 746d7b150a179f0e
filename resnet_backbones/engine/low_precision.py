"""A detector evaluated with its backbone in bfloat16 or int8 (``tools/train_net.py --eval-only
--inference-precision bf16|int8``).

The backbone (body and FPN) is replaced by
:func:`~resnet_backbones.modeling.inference.compile_for_inference` with ``dtype=torch.bfloat16``,
or by :func:`~resnet_backbones.modeling.quantize.quantize_for_inference` calibrated on the first
images of the first test dataset, as the model's own preprocessing makes them (normalised and
padded to the size divisibility). The heads stay in float32.
"""
from __future__ import annotations

import itertools
import logging
from typing import List

import torch
from torch import nn

from ..modeling.fold import fold_norms
from ..modeling.inference import compile_for_inference
from ..modeling.quantize import quantize_for_inference

__all__ = ["PRECISIONS", "calibration_batches", "set_backbone_precision"]

PRECISIONS = ("fp32", "bf16", "int8")
logger = logging.getLogger(__name__)


@torch.no_grad()
def calibration_batches(cfg, model: nn.Module, num_images: int = 8) -> List[torch.Tensor]:
    """The backbone's inputs for the first ``num_images`` images of ``cfg.DATASETS.TEST[0]``."""
    from detectron2.data import build_detection_test_loader

    if not cfg.DATASETS.TEST:
        raise ValueError("int8 calibration reads images of DATASETS.TEST[0], and DATASETS.TEST is empty")
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return [model.preprocess_image(inputs).tensor for inputs in itertools.islice(loader, num_images)]


def set_backbone_precision(cfg, model: nn.Module, precision: str, *, num_calibration: int = 8) -> nn.Module:
    """``model`` (a Detectron2 meta-architecture, weights loaded) with its backbone run at
    ``precision`` (one of :data:`PRECISIONS`); returns it, switched to eval mode."""
    if precision not in PRECISIONS:
        raise ValueError(f"--inference-precision {precision!r}: one of {', '.join(PRECISIONS)}")
    model.eval()
    if precision == "fp32":
        return model
    if precision == "bf16":
        model.backbone = compile_for_inference(fold_norms(model.backbone), dtype=torch.bfloat16, dynamic=None)
    else:
        batches = calibration_batches(cfg, model, num_calibration)
        logger.info("Calibrating the int8 backbone on %d images of %s", len(batches), cfg.DATASETS.TEST[0])
        model.backbone = quantize_for_inference(model.backbone, batches)
    return model
