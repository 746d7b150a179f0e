"""``tools/pretrain_imagenet.py``: arguments, config, resume, and the call into :func:`pretrain`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from ..cli import exits_cleanly
from ..engine.launch import restarted_by_torchrun
from ..weights.io import load_weights_file
from ..weights.pretrained import PRETRAIN_FORMAT_VERSION, is_pretrain_checkpoint
from ..config import merge_overrides
from .config import config_differences, config_from_yaml_text, load_pretrain_config, validate
from .engine import CHECKPOINT_NAME, pretrain

#: flag -> (config key, value written for a store_true flag)
FLAG_KEYS = {
    "epochs": "PRETRAIN.EPOCHS",
    "batch_size": "PRETRAIN.BATCH_SIZE",
    "lr": "PRETRAIN.BASE_LR",
    "crop_size": "PRETRAIN.CROP_SIZE",
    "workers": "PRETRAIN.NUM_WORKERS",
    "amp": "PRETRAIN.PRECISION",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_imagenet.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a ResNet body of this package (any MODEL.RESNETS.* variant) with a linear "
                    "classifier on an ImageNet-style folder, in one process or under torchrun.",
        epilog="examples:\n"
               "  pretrain_imagenet.py --config-file configs/ImageNet/R_50.yaml --data-path /data/imagenet "
               "--output-dir out/r50\n"
               "  torchrun --nproc-per-node 8 pretrain_imagenet.py --config-file configs/ImageNet/R_50_modern.yaml "
               "--data-path /data/imagenet --output-dir out/r50_modern --amp bf16 --channels-last\n"
               "  pretrain_imagenet.py --data-path /data/imagenet --output-dir out/r50 --resume",
    )
    parser.add_argument("--config-file", help="a config of configs/ImageNet/ (optional with --resume)")
    parser.add_argument("--data-path", required=True, help="DIR with train/ and val/, one folder per class")
    parser.add_argument("--output-dir", required=True, help="checkpoint, metrics.json, TensorBoard events, plot")
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                        help=f"continue a run from CHECKPOINT (default: OUTPUT_DIR/{CHECKPOINT_NAME}) with its "
                             "config, schedule, optimizer and EMA")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip images that cannot be decoded and list them at the end (default: stop)")
    parser.add_argument("--epochs", type=int, help="PRETRAIN.EPOCHS")
    parser.add_argument("--batch-size", type=int, help="PRETRAIN.BATCH_SIZE, over all processes together")
    parser.add_argument("--lr", type=float, help="PRETRAIN.BASE_LR: the rate for 256 images; the rate used is "
                                                 "LR x batch / 256")
    parser.add_argument("--crop-size", type=int, help="PRETRAIN.CROP_SIZE (training crops; validation follows "
                                                      "unless PRETRAIN.VAL_CROP_SIZE is set)")
    parser.add_argument("--workers", type=int, help="PRETRAIN.NUM_WORKERS, data-loading processes per GPU")
    parser.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision (PRETRAIN.PRECISION)")
    parser.add_argument("--channels-last", action="store_true", help="MODEL.RESNETS.CHANNELS_LAST True")
    parser.add_argument("--sync-bn", action="store_true", help="MODEL.RESNETS.NORM SyncBN (several GPUs)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. PRETRAIN.EMA.ENABLED True")
    return parser


def _overrides(args: argparse.Namespace) -> List[str]:
    overrides = list(args.opts)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides += [key, str(value)]
    if args.channels_last:
        overrides += ["MODEL.RESNETS.CHANNELS_LAST", "True"]
    if args.sync_bn:
        overrides += ["MODEL.RESNETS.NORM", "SyncBN"]
    return overrides


def _load_resume_state(path: Path):
    state = load_weights_file(path)  # torch.load(weights_only=True), with readable errors
    if not is_pretrain_checkpoint(state):
        raise ValueError(f"{path}: not a checkpoint of pretrain_imagenet.py")
    if state.get("version") != PRETRAIN_FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}; this version reads "
                         f"{PRETRAIN_FORMAT_VERSION}")
    return state


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    overrides = _overrides(args)
    resume_state = None
    if args.resume is None and restarted_by_torchrun() and (output_dir / CHECKPOINT_NAME).is_file():
        args.resume = ""  # torchrun --max-restarts restarted the workers: continue, not start over
    if args.resume is not None:
        path = Path(args.resume) if args.resume else output_dir / CHECKPOINT_NAME
        if not path.is_file():
            raise ValueError(f"--resume: {path}: no such checkpoint")
        resume_state = _load_resume_state(path)
        stored = validate(config_from_yaml_text(resume_state["config"]))
        requested = (load_pretrain_config(args.config_file, overrides) if args.config_file
                     else validate(merge_overrides(stored.clone(), overrides)))
        differences = config_differences(stored, requested)
        if differences:
            raise ValueError(f"--resume: {path} was trained with another config; a resumed run keeps its "
                             "schedule (start a new --output-dir to change it): "
                             + "; ".join(f"{k} is {a!r} there, {b!r} here" for k, a, b in differences))
        cfg = requested
    else:
        if not args.config_file:
            raise ValueError("--config-file is required (unless --resume continues a run)")
        if (output_dir / CHECKPOINT_NAME).exists():
            raise ValueError(f"{output_dir / CHECKPOINT_NAME} exists: pass --resume to continue that run, "
                             "or choose another --output-dir")
        cfg = load_pretrain_config(args.config_file, overrides)
    pretrain(cfg, args.data_path, output_dir, resume_state=resume_state, skip_bad_images=args.skip_bad_images)
    return 0
