"""The segmentation demo: DeepLab v3+ R-18 on the synthetic semantic split, on a laptop CPU.

As ``make demo`` does for Mask R-CNN: generate the synthetic shapes (once) and their semantic
labels, pretrain the R-18 body on crops of the training objects and convert it, then train
``configs/Demo/deeplab_v3_plus_R_18_synthetic.yaml`` from it. The model is scored (mIoU on the
val split) before training, the untrained baseline, and after. ``summary.json`` in the output
folder holds both.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Dict, List, Optional

from ..cli import exits_cleanly
from ..data import (DEMO_STYLE, ensure_synthetic_coco, ensure_synthetic_sem_seg, register_synthetic_coco,
                    register_synthetic_sem_seg)
from ..fileio import write_json_atomic
from .demo import PRETRAIN_CONFIG, open_demo_run, start_from_object_crops
from .train_net import synthetic_root
from .trainer import Trainer

SEM_SEG_DEMO_CONFIG = PRETRAIN_CONFIG.parent / "deeplab_v3_plus_R_18_synthetic.yaml"


def run_sem_seg_demo(output_dir: str = "output/demo_sem_seg", config_file: str = str(SEM_SEG_DEMO_CONFIG),
                     data_root: Optional[str] = None, overrides: Optional[List[str]] = None,
                     num_train: int = 400, num_val: int = 50, pretrain_config: Optional[str] = str(PRETRAIN_CONFIG),
                     pretrain_overrides: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """Pretrain the body, train and evaluate; returns ``{"untrained": ..., "trained": ...,
    "minutes": ...}`` with Detectron2's ``sem_seg`` results (also ``summary.json``). With
    ``pretrain_config`` None, or ``MODEL.WEIGHTS`` among the overrides, the model starts from those
    weights instead."""
    start = time.perf_counter()
    cfg, output = open_demo_run(output_dir, config_file, overrides)
    logger = logging.getLogger("resnet_backbones.sem_seg_demo")

    root = data_root or synthetic_root()
    ensure_synthetic_coco(root, num_train=num_train, num_val=num_val, style=DEMO_STYLE)
    ensure_synthetic_sem_seg(root)
    register_synthetic_coco(root)
    register_synthetic_sem_seg(root)
    start_from_object_crops(cfg, root, output, pretrain_config, pretrain_overrides, overrides, logger)
    (output / "metrics.json").unlink(missing_ok=True)  # a fresh run: Detectron2's JSONWriter appends

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    untrained = Trainer.test(cfg, trainer.model)
    trainer.train()
    summary = {"untrained": dict(untrained["sem_seg"]), "trained": dict(trainer._last_eval_results["sem_seg"]),
               "minutes": (time.perf_counter() - start) / 60}
    write_json_atomic(output / "summary.json", summary, indent=2)
    logger.info("mIoU on %s: %.1f untrained, %.1f after %d iterations (%.1f min in all, pretraining included)",
                cfg.DATASETS.TEST[0], summary["untrained"]["mIoU"], summary["trained"]["mIoU"], cfg.SOLVER.MAX_ITER,
                summary["minutes"])
    return summary


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="output/demo_sem_seg")
    parser.add_argument("--config-file", default=str(SEM_SEG_DEMO_CONFIG))
    parser.add_argument("--data-root", default=None, help=f"default: {synthetic_root()}")
    parser.add_argument("--num-train", type=int, default=400, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=50, help="synthetic validation images")
    parser.add_argument("--no-pretrain", action="store_true", help="start from MODEL.WEIGHTS (default: random)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="PRETRAIN.EPOCHS (default: the config's)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    pretrain_overrides = [] if args.pretrain_epochs is None else ["PRETRAIN.EPOCHS", str(args.pretrain_epochs)]
    run_sem_seg_demo(args.output_dir, args.config_file, args.data_root, args.opts, num_train=args.num_train,
                     num_val=args.num_val, pretrain_config=None if args.no_pretrain else str(PRETRAIN_CONFIG),
                     pretrain_overrides=pretrain_overrides)
    return 0
