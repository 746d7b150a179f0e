"""``tools/train_net.py``: train or evaluate a detector with one of our backbones.

Detectron2's arguments and behaviour (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``KEY VALUE``
overrides), plus:

* ``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR`` (repeatable) registers a COCO-format dataset,
  which ``DATASETS.TRAIN``/``DATASETS.TEST`` can then name; ``coco_2017_train``/``_val`` point
  at ``$DETECTRON2_DATASETS/coco``, and ``synthetic_shapes_train``/``_val`` at the built-in
  synthetic dataset (generated on first use);
* ``--dataset NAME=IMAGE_DIR:LABEL_DIR`` registers a semantic-segmentation dataset (image and
  label PNG pairs); ``synthetic_shapes_sem_seg_train``/``_val`` (and ``synthetic_shapes_panoptic_*``,
  instances and labels) are the built-in synthetic one;
* it runs under ``torchrun``, and without CUDA ``--num-gpus N`` runs N CPU processes (gloo).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..cli import exits_cleanly
from ..config import load_config
from ..data import (DEMO_STYLE, SYNTHETIC_COCO_NAMES, SYNTHETIC_PANOPTIC_NAMES, SYNTHETIC_SEM_SEG_NAMES,
                    ensure_synthetic_coco, ensure_synthetic_sem_seg, register_coco_from_detectron2_datasets,
                    register_dataset_specs, register_synthetic_coco, register_synthetic_panoptic,
                    register_synthetic_sem_seg)
from ..data.datasets import SPEC_SYNTAX, parse_dataset_spec
from ..weights.checkpoint import BackboneCheckpointer
from .launch import launch
from .trainer import Trainer, TrainingDivergedError, check_training_config

logger = logging.getLogger("resnet_backbones.train_net")


def argument_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--dataset", action="append", default=[], metavar=SPEC_SYNTAX,
                        help="register a COCO-format (or image + label PNG) dataset under NAME (repeatable)")
    return parser


def synthetic_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic_shapes")


def register_datasets(cfg, specs: Sequence[str]) -> None:
    """Register every dataset the config can name; run in each process before training."""
    register_coco_from_detectron2_datasets()
    register_dataset_specs(specs, ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    named = set(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    semantic = bool(set(SYNTHETIC_SEM_SEG_NAMES + SYNTHETIC_PANOPTIC_NAMES) & named)
    if semantic or set(SYNTHETIC_COCO_NAMES) & named:
        if comm.is_main_process():
            ensure_synthetic_coco(synthetic_root(), style=DEMO_STYLE)
            if semantic:
                ensure_synthetic_sem_seg(synthetic_root())
        comm.synchronize()
        register_synthetic_coco(synthetic_root())
        if semantic:
            register_synthetic_sem_seg(synthetic_root())
            register_synthetic_panoptic(synthetic_root())


def setup(args: argparse.Namespace):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    register_datasets(cfg, args.dataset)
    return cfg


def run(args: argparse.Namespace):
    """The work of one process: evaluate (``--eval-only``) or train, then evaluate."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        BackboneCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _run_and_report_divergence(args: argparse.Namespace):
    try:
        return run(args)
    except TrainingDivergedError as error:
        if "in another process" not in str(error) or comm.is_main_process():
            print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _check_arguments(args: argparse.Namespace) -> None:
    """Fail before any process starts on what would otherwise fail in every one of them."""
    check_training_config(load_config(args.config_file, args.opts))
    for spec in args.dataset:
        parse_dataset_spec(spec)
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} --machine-rank "
                         f"{args.machine_rank}: need at least one process per machine and "
                         "0 <= machine rank < number of machines")


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    _check_arguments(args)
    try:
        launch(_run_and_report_divergence, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except SystemExit as stop:
        return int(stop.code or 0)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as error:
        # an exited worker has printed its own message; a raised one's traceback is in `error`
        print(f"error: a training process failed: {error}", file=sys.stderr)
        return 1
    return 0
