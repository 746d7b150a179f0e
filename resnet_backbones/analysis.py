"""Parameter and multiply-add counts of a backbone, per stage, through fvcore."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Dict, List

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from .modeling.arch import FEATURE_NAMES


@dataclass
class StageCount:
    name: str
    params: int
    macs: int  # multiply-adds, as fvcore counts "flops" (one per fused multiply-add)


def _deform_conv_macs(inputs, outputs) -> int:
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, ...): counted as the dense
    # convolution it deforms; the bilinear sampling of the input is left out, as pooling is
    weight, out = get_shape(inputs[1]), get_shape(outputs[0])
    return prod(out) * prod(weight[1:])


def _stage_prefixes(model: nn.Module) -> Dict[str, str]:
    """Our stage names -> module path inside ``model`` (bare body, or ``bottom_up`` of an FPN)."""
    body = "bottom_up." if hasattr(model, "bottom_up") else ""
    names = dict(model.named_modules())
    return {s: f"{body}{s}" for s in FEATURE_NAMES if f"{body}{s}" in names}


def count_backbone(model: nn.Module, height: int = 224, width: int = 224) -> List[StageCount]:
    """Per-stage counts of ``model`` on one ``height x width`` image, then the rest and a total.

    Counts convolutions (deformable ones as the dense convolution they deform), linear layers
    and norms as fvcore does; pooling, activations, squeeze-and-excitation's channel means and
    gating products are free, as in the papers' tables.
    """
    model = model.eval()
    x = torch.zeros(1, 3, height, width)
    analysis = (FlopCountAnalysis(model, x).set_op_handle("torchvision::deform_conv2d", _deform_conv_macs)
                .unsupported_ops_warnings(False).uncalled_modules_warnings(False))
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    by_module = analysis.by_module()
    params = dict(model.named_parameters())
    rows, counted_macs, counted_params = [], 0, 0
    for stage, path in _stage_prefixes(model).items():
        stage_params = sum(p.numel() for n, p in params.items() if n.startswith(path + "."))
        rows.append(StageCount(stage, stage_params, int(by_module[path])))
        counted_macs += rows[-1].macs
        counted_params += stage_params
    total_params = sum(p.numel() for p in params.values())
    total_macs = int(analysis.total())
    if total_params != counted_params or total_macs != counted_macs:
        rows.append(StageCount("other (FPN, heads)", total_params - counted_params, total_macs - counted_macs))
    rows.append(StageCount("total", total_params, total_macs))
    return rows


def format_counts(rows: List[StageCount]) -> str:
    lines = [f"{'stage':<20} {'params':>14} {'GMACs':>10}"]
    lines += [f"{r.name:<20} {r.params:>14,} {r.macs / 1e9:>10.3f}" for r in rows]
    return "\n".join(lines)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="analyze_model.py",
                                     description="Parameters and multiply-adds of a config's backbone, per stage.")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    return parser


def main(argv=None) -> int:
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    from .cli import exits_cleanly
    from .config import load_config

    @exits_cleanly
    def run() -> int:
        args = build_parser().parse_args(argv)
        cfg = load_config(args.config_file, args.opts)
        model = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        height, width = args.input_size
        print(f"{cfg.MODEL.BACKBONE.NAME}, depth {cfg.MODEL.RESNETS.DEPTH}, input 1x3x{height}x{width}")
        print(format_counts(count_backbone(model, height, width)))
        return 0

    return run()
