"""``tools/convert_weights.py``: argument parsing and the call into :func:`convert_weights`."""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..cli import exits_cleanly
from .convert import convert_weights
from .naming import SOURCES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights.py",
        description="Convert ResNet weights (torchvision, timm, Detectron2, MSRA/Caffe2, or a checkpoint of "
                    "tools/pretrain_imagenet.py) into a file that Detectron2 loads through MODEL.WEIGHTS.",
    )
    parser.add_argument("input", help="weights file: .pth/.pt, .safetensors or .pkl")
    parser.add_argument("output", help="file to write: .pth (recommended) or .pkl")
    parser.add_argument("--source", choices=SOURCES, help="family of the input (detected when omitted)")
    parser.add_argument("--prefix", help="where the file holds several encoders (MoCo's query and key encoders, "
                                         "DINO's teacher and student...), the prefix of the one to take, e.g. "
                                         "module.encoder_k. (the report lists those found)")
    parser.add_argument("--timm-model", metavar="NAME",
                        help="the timm model the weights come from, for what their tensors cannot show "
                             "(anti-aliasing: resnetaa50d, resnetblur50...); checked against the tensors")
    parser.add_argument("--config-file", help="check the weights against this config's backbone instead "
                                              "of the architecture inferred from the weights")
    parser.add_argument("--ema", action="store_true",
                        help="from a pretrain_imagenet.py checkpoint, take the EMA of the weights instead of the "
                             "weights themselves")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="fully unpickle inputs that hold objects other than tensors (trusted files only)")
    return parser


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    arch = None
    if args.config_file:
        from ..config import load_config
        from ..modeling.arch import ResNetArch

        arch = ResNetArch.from_cfg(load_config(args.config_file)).replace(freeze_at=0)
    report = convert_weights(args.input, args.output, source=args.source, arch=arch,
                             allow_unsafe_pickle=args.allow_unsafe_pickle, ema=args.ema, prefix=args.prefix,
                              timm_model=args.timm_model)
    print(f"wrote {args.output}")
    print(report.format(output=args.output))
    return 0
