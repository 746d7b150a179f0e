"""Parameter and multiply-add counts of a backbone, per stage, through fvcore; and of torchvision's
classifiers (VGG, DenseNet, ResNet) with the share of their fully connected layers."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod
from typing import Dict, List, Sequence

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
    """Our stage names -> module path inside ``model`` (bare body, ``bottom_up`` of an FPN, or
    ``backbone`` of the pretraining classifier)."""
    body = next((f"{name}." for name in ("bottom_up", "backbone") if hasattr(model, name)), "")
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


def layer_weight_count(model: nn.Module) -> int:
    """Parameters of the convolutions and fully connected layers, norms left out: how the papers
    count (pre-activation ResNet-1001's "10.2 M" is this; with its BatchNorms it holds 10.3 M)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for p in m.parameters(recurse=False))


@dataclass
class ModelCount:
    name: str
    params: int
    macs: int
    fc_params: int  # in fully connected (nn.Linear) layers
    first_fc_params: int  # in the first of them (VGG's 25088 x 4096 layer)

    @property
    def fc_share(self) -> float:
        return self.fc_params / self.params


def count_torchvision(name: str, height: int = 224, width: int = 224) -> ModelCount:
    """Parameters, multiply-adds and fully connected parameters of torchvision's ``name``
    (``vgg16``, ``densenet121``, ``resnet50``...), built without weights (nothing downloads)."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError:
        raise ValueError(f"--torchvision {name}: not a torchvision classifier; e.g. vgg16, vgg19, densenet121, "
                         "resnet50 (torchvision.models.list_models())") from None
    model.eval()
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    macs = (FlopCountAnalysis(model, torch.zeros(1, 3, height, width)).unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False).total())
    fc = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, nn.Linear)]
    return ModelCount(name, sum(p.numel() for p in model.parameters()), int(macs), sum(fc), fc[0] if fc else 0)


def format_model_counts(rows: Sequence[ModelCount]) -> str:
    lines = [f"{'model':<14} {'params':>13} {'GMACs':>8} {'FC params':>13} {'FC share':>9} {'first FC':>13}"]
    lines += [f"{r.name:<14} {r.params:>13,} {r.macs / 1e9:>8.3f} {r.fc_params:>13,} {100 * r.fc_share:>8.1f}% "
              f"{r.first_fc_params:>13,}" for r in rows]
    return "\n".join(lines)


def format_counts(rows: List[StageCount]) -> str:
    lines = [f"{'stage':<20} {'params':>14} {'GMACs':>10}"]
    lines += [f"{r.name:<20} {r.params:>14,} {r.macs / 1e9:>10.3f}" for r in rows]
    return "\n".join(lines)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="analyze_model.py",
                                     description="Parameters and multiply-adds of a config's backbone, per stage; "
                                                 "and of torchvision classifiers, with their fully connected share.")
    parser.add_argument("--config-file", help="a detection config, or with --num-classes a pretraining config")
    parser.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="count the pretraining classifier (body, pooling and an N-way linear layer) of a "
                             "configs/ImageNet or configs/CIFAR config, as the papers count a network")
    parser.add_argument("--torchvision", nargs="+", default=(), metavar="NAME",
                        help="also count these torchvision classifiers (e.g. vgg16 vgg19 densenet121 resnet50)")
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
        height, width = args.input_size
        if args.config_file is None and not args.torchvision:
            raise ValueError("--config-file or --torchvision is required")
        if args.num_classes is not None and args.num_classes < 1:
            raise ValueError(f"--num-classes {args.num_classes}: a positive number of classes")
        if args.config_file is not None:
            if args.num_classes is not None:
                from .pretrain import ImageNetClassifier, load_pretrain_config

                cfg = load_pretrain_config(args.config_file, args.opts)
                model = ImageNetClassifier.from_config(cfg, args.num_classes)
                name = f"pretraining classifier ({args.num_classes} classes)"
            else:
                cfg = load_config(args.config_file, args.opts)
                model = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
                name = cfg.MODEL.BACKBONE.NAME
            print(f"{name}, depth {cfg.MODEL.RESNETS.DEPTH}, input 1x3x{height}x{width}")
            print(format_counts(count_backbone(model, height, width)))
            print(f"convolution and linear weights (no norms, as the papers count): {layer_weight_count(model):,}")
        if args.torchvision:
            print(format_model_counts([count_torchvision(n, height, width) for n in args.torchvision]))
        return 0

    return run()
