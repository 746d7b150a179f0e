#!/usr/bin/env python
"""Generate the synthetic datasets (nothing to download), e.g.

    tools/make_synthetic_data.py coco --output-dir datasets/synthetic_shapes --num-train 400 --num-val 50
    tools/make_synthetic_data.py imagefolder --output-dir datasets/synthetic_imagefolder
    tools/make_synthetic_data.py crops --coco-root datasets/synthetic_shapes \
        --output-dir datasets/synthetic_shapes/object_crops

Existing data generated with the same parameters is kept; pass --force to regenerate anyway.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from resnet_backbones.data import (
    DEMO_STYLE,
    IMAGEFOLDER_CLASSES,
    SYNTHETIC_COCO_SPLITS,
    coco_split_paths,
    ensure_imagefolder,
    ensure_object_crops,
    ensure_synthetic_coco,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    kinds = parser.add_subparsers(dest="kind", required=True)

    coco = kinds.add_parser(
        "coco", help="COCO-format instance segmentation: shapes on textured backgrounds"
    )
    coco.add_argument(
        "--output-dir", required=True, help="root: train/, val/, annotations/ go here"
    )
    coco.add_argument("--num-train", type=int, default=400)
    coco.add_argument("--num-val", type=int, default=50)
    coco.add_argument("--image-size", type=int, default=256, help="square images, pixels per side")
    coco.add_argument("--seed", type=int, default=0)
    coco.add_argument("--force", action="store_true", help="regenerate even if up to date")
    coco.add_argument("--demo-style", action="store_true",
                      help="the style of make demo and the registered synthetic_shapes_* datasets")

    folder = kinds.add_parser(
        "imagefolder", help="ImageNet-style classification folders (train/, val/)"
    )
    folder.add_argument("--output-dir", required=True)
    folder.add_argument(
        "--num-classes", type=int, default=4, help=f"2 to {len(IMAGEFOLDER_CLASSES)}"
    )
    folder.add_argument("--train-per-class", type=int, default=32)
    folder.add_argument("--val-per-class", type=int, default=8)
    folder.add_argument("--image-size", type=int, default=64)
    folder.add_argument("--seed", type=int, default=0)
    folder.add_argument("--force", action="store_true", help="regenerate even if up to date")

    crops = kinds.add_parser(
        "crops", help="an ImageFolder of the objects of a generated COCO set (what make demo pretrains on)"
    )
    crops.add_argument("--coco-root", required=True, help="the --output-dir of a 'coco' run")
    crops.add_argument("--output-dir", required=True)
    crops.add_argument("--size", type=int, default=64, help="pixels per side of a crop")
    crops.add_argument("--context", type=float, default=1.4, help="crop side / the box's longer side")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _generate(args)
    except ValueError as error:  # bad parameter values: report them like argparse does
        parser.error(str(error))
    return 0


def _generate(args: argparse.Namespace) -> None:
    if args.kind == "coco":
        jsons = ensure_synthetic_coco(
            args.output_dir,
            args.num_train,
            args.num_val,
            args.seed,
            args.image_size,
            style=DEMO_STYLE if args.demo_style else None,
            force=args.force,
        )
        for split_name, json_path in jsons.items():
            print(f"{split_name}: {json_path}")
    elif args.kind == "crops":
        splits = {split: coco_split_paths(args.coco_root, split) for split in SYNTHETIC_COCO_SPLITS}
        missing = [str(path) for path, _ in splits.values() if not path.is_file()]
        if missing:
            raise ValueError(f"--coco-root {args.coco_root}: no {', '.join(missing)}")
        print(f"crops: {ensure_object_crops(splits, args.output_dir, size=args.size, context=args.context)}")
    else:
        root = ensure_imagefolder(
            args.output_dir,
            args.num_classes,
            args.train_per_class,
            args.val_per_class,
            args.image_size,
            args.seed,
            force=args.force,
        )
        print(f"imagefolder: {root}")


if __name__ == "__main__":
    sys.exit(main())
