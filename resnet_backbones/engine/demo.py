"""``make demo``: the whole road on the built-in synthetic dataset, on a laptop CPU.

Generate the dataset (once); pretrain ResNet-18 on crops of its training objects (the ImageNet
step, ``tools/pretrain_imagenet.py``'s engine) and convert the checkpoint into Detectron2 weights
(``tools/convert_weights.py``'s); train Mask R-CNN R-18-FPN from them; evaluate COCO mAP. The
output folder then holds ``summary.json`` (Detectron2's results dict), ``predictions/*.png`` (val
images with predicted boxes and masks), ``training_curves.png`` (loss and AP over iterations),
next to Detectron2's ``metrics.json``, TensorBoard events and checkpoints, and ``pretrain/``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..cli import exits_cleanly
from ..config import load_config
from ..data import (
    DEMO_STYLE,
    SYNTHETIC_COCO_SPLITS,
    coco_split_paths,
    ensure_object_crops,
    ensure_synthetic_coco,
    register_synthetic_coco,
)
from ..fileio import write_json_atomic
from ..pretrain.config import load_pretrain_config
from ..pretrain.engine import CHECKPOINT_NAME, pretrain
from ..weights.convert import convert_weights
from .reports import draw_predictions, plot_training_curves
from .train_net import synthetic_root
from .trainer import Trainer

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "Demo" / "mask_rcnn_R_18_FPN_synthetic.yaml"
PRETRAIN_CONFIG = DEMO_CONFIG.parent / "R_18_object_crops_pretrain.yaml"
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def format_results(results: Dict[str, Dict[str, float]]) -> str:
    rows = [[task] + [f"{results[task].get(m, float('nan')):.1f}" for m in SUMMARY_METRICS]
            for task in ("bbox", "segm") if task in results]
    return tabulate(rows, headers=["task", *SUMMARY_METRICS], tablefmt="pipe")


def pretrain_on_object_crops(data_root: str, output_dir: Path, config_file: str = str(PRETRAIN_CONFIG),
                             overrides: Optional[List[str]] = None, log=print) -> Path:
    """Pretrain a body on crops of the synthetic training objects and convert it; returns the
    Detectron2 weights file (``output_dir/model_d2.pth``)."""
    splits = {split: coco_split_paths(data_root, split) for split in SYNTHETIC_COCO_SPLITS}
    crops = ensure_object_crops(splits, Path(data_root) / "object_crops")
    (output_dir / CHECKPOINT_NAME).unlink(missing_ok=True)  # a fresh run, not a resumed one
    cfg = load_pretrain_config(config_file, list(overrides or []))
    result = pretrain(cfg, crops, output_dir, log=log)
    weights = output_dir / "model_d2.pth"
    convert_weights(result.checkpoint, weights)
    return weights


def open_demo_run(output_dir: str, config_file: str, overrides: Optional[List[str]]) -> Tuple[CfgNode, Path]:
    """A demo's config (``OUTPUT_DIR`` set to ``output_dir``, then ``overrides``) and its output
    folder, made, with Detectron2's and our logs written there."""
    output = Path(output_dir)
    cfg = load_config(config_file, ["OUTPUT_DIR", str(output)] + list(overrides or []))
    output.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output), name="detectron2")
    setup_logger(str(output), name="resnet_backbones")
    return cfg, output


def start_from_object_crops(cfg: CfgNode, data_root: str, output: Path, pretrain_config: Optional[str],
                            pretrain_overrides: Optional[List[str]], overrides: Optional[List[str]],
                            logger: logging.Logger) -> None:
    """Sets ``cfg.MODEL.WEIGHTS`` to a body pretrained on crops of the training objects
    (:func:`pretrain_on_object_crops` into ``output/pretrain``), unless ``pretrain_config`` is None
    or the user's ``overrides`` set ``MODEL.WEIGHTS``; then freezes ``cfg``."""
    if pretrain_config and "MODEL.WEIGHTS" not in list(overrides or [])[::2]:
        logger.info("Pretraining the body on crops of the training objects (%s)", pretrain_config)
        cfg.MODEL.WEIGHTS = str(pretrain_on_object_crops(data_root, output / "pretrain", pretrain_config,
                                                         pretrain_overrides, log=logger.info))
    cfg.freeze()


def run_demo(output_dir: str = "output/demo", config_file: str = str(DEMO_CONFIG),
             data_root: Optional[str] = None, overrides: Optional[List[str]] = None,
             num_pictures: int = 4, num_train: int = 400, num_val: int = 50,
             pretrain_config: Optional[str] = str(PRETRAIN_CONFIG),
             pretrain_overrides: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """Pretrain, train and evaluate the demo model; returns Detectron2's results dict (also
    ``summary.json``). With ``pretrain_config`` None, or ``MODEL.WEIGHTS`` among the overrides,
    the detector starts from those weights (random ones for ``MODEL.WEIGHTS ""``) instead."""
    start = time.perf_counter()
    cfg, output = open_demo_run(output_dir, config_file, overrides)
    logger = logging.getLogger("resnet_backbones.demo")

    root = data_root or synthetic_root()
    ensure_synthetic_coco(root, num_train=num_train, num_val=num_val, style=DEMO_STYLE)
    register_synthetic_coco(root)
    start_from_object_crops(cfg, root, output, pretrain_config, pretrain_overrides, overrides, logger)
    # a fresh run: Detectron2's JSONWriter appends, and the curves must be this run's
    (output / "metrics.json").unlink(missing_ok=True)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results
    write_json_atomic(output / "summary.json", results, indent=2)
    pictures = draw_predictions(cfg, trainer.model, cfg.DATASETS.TEST[0], output / "predictions", num_pictures)
    curves = plot_training_curves(output / "metrics.json", output / "training_curves.png")

    minutes = (time.perf_counter() - start) / 60
    logger.info("COCO mAP on %s after %d iterations (%.1f min in all, pretraining included):\n%s",
                cfg.DATASETS.TEST[0], cfg.SOLVER.MAX_ITER, minutes, format_results(results))
    logger.info("Wrote %s, %s and %d pictures in %s", output / "summary.json", curves, len(pictures),
                pictures[0].parent if pictures else output)
    return results


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--config-file", default=str(DEMO_CONFIG))
    parser.add_argument("--data-root", default=None, help=f"default: {synthetic_root()}")
    parser.add_argument("--num-train", type=int, default=400, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=50, help="synthetic validation images")
    parser.add_argument("--pretrain-config", default=str(PRETRAIN_CONFIG),
                        help="config of the pretraining on object crops")
    parser.add_argument("--no-pretrain", action="store_true",
                        help="train the detector from MODEL.WEIGHTS (default: random initialisation)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    run_demo(args.output_dir, args.config_file, args.data_root, args.opts, num_train=args.num_train,
             num_val=args.num_val, pretrain_config=None if args.no_pretrain else args.pretrain_config)
    return 0
