"""``tools/train_net.py``: train or evaluate a detector with one of our backbones.

Detectron2's arguments and behaviour (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing ``KEY VALUE``
overrides), plus:

* ``--config-file X.py`` takes a Detectron2 LazyConfig (``configs/new_baselines``, ``configs/common``)
  with ``key=value`` overrides, as Detectron2's ``lazyconfig_train_net.py`` does, trained by the same
  trainer (``config_frontends``);
* ``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR`` (repeatable) registers a COCO-format dataset,
  which ``DATASETS.TRAIN``/``DATASETS.TEST`` can then name; ``coco_2017_train``/``_val`` point
  at ``$DETECTRON2_DATASETS/coco``, and ``synthetic_shapes_train``/``_val`` at the built-in
  synthetic dataset (generated on first use);
* ``--dataset NAME=IMAGE_DIR:LABEL_DIR`` registers a semantic-segmentation dataset (image and
  label PNG pairs); ``synthetic_shapes_sem_seg_train``/``_val`` (and ``synthetic_shapes_panoptic_*``,
  instances and labels) are the built-in synthetic one;
* it runs under ``torchrun``, and without CUDA ``--num-gpus N`` runs N CPU processes (gloo);
* each ``--dataset`` is checked (:mod:`resnet_backbones.data.checks`) before anything trains:
  what would fail or train wrongly stops the run with one ``error:`` line and the full report in
  ``OUTPUT_DIR``; what Detectron2 tolerates is one ``warning:`` line (``--skip-data-check``);
* an error while training (in Detectron2's loop or a data-loader worker) is one ``error:`` line
  naming the file or value, exit status 2 (1 for a diverged loss), without the traceback unless
  ``--debug`` or ``RESNET_BACKBONES_DEBUG=1`` asks for it;
* ``--eval-only --inference-precision bf16|int8`` evaluates with the backbone in bfloat16 or int8
  (:mod:`resnet_backbones.engine.low_precision`; int8 calibrates on test images);
* checkpoint temporaries a kill left in ``OUTPUT_DIR`` are removed when training starts;
* workers restarted by ``torchrun --max-restarts N`` resume from the last checkpoint, and a run
  submitted by ``tools/submit.py`` stops on a preemption signal with a checkpoint of that exact
  iteration (:mod:`resnet_backbones.engine.preemption`).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import List, Optional, Sequence, Union

import torch
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from omegaconf import OmegaConf

from ..cli import DEBUG_VARIABLE, USER_ERRORS, exits_cleanly, show_tracebacks
from ..data import (DEMO_STYLE, SYNTHETIC_COCO_NAMES, SYNTHETIC_PANOPTIC_NAMES, SYNTHETIC_SEM_SEG_NAMES,
                    ensure_synthetic_coco, ensure_synthetic_sem_seg, register_coco_from_detectron2_datasets,
                    register_dataset_specs, register_synthetic_coco, register_synthetic_panoptic,
                    register_synthetic_sem_seg)
from ..data.checks import WARNING, check_coco_dataset, check_sem_seg_dataset
from ..data.datasets import SPEC_SYNTAX, DatasetSpec, parse_dataset_spec
from ..data.sem_seg import SemSegDatasetSpec
from ..fileio import atomic_output
from ..modeling.inference import check_bfloat16_support
from ..weights.checkpoint import BackboneCheckpointer, remove_checkpoint_temporaries
from .config_frontends import lazy_config_of, load_training_config, recorded_config, trainer_class
from .launch import launch, restarted_by_torchrun
from .low_precision import PRECISIONS, set_backbone_precision
from .trainer import TrainingDivergedError, check_training_config

logger = logging.getLogger("resnet_backbones.train_net")


def argument_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--dataset", action="append", default=[], metavar=SPEC_SYNTAX,
                        help="register a COCO-format (or image + label PNG) dataset under NAME (repeatable)")
    parser.add_argument("--skip-data-check", action="store_true",
                        help="do not check the --dataset jsons and images before training")
    parser.add_argument("--inference-precision", choices=PRECISIONS, default="fp32",
                        help="with --eval-only: run the backbone in bfloat16 (CPUs with AVX512-BF16 or AMX) or "
                             "int8 (PT2E static quantization, calibrated on DATASETS.TEST[0])")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_VARIABLE}=1)")
    return parser


def debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or show_tracebacks()


def num_classes_of(cfg) -> tuple:
    """(config key, value) of the number of classes the model predicts (value None: not known)."""
    lazy = lazy_config_of(cfg)
    if lazy is not None:
        key = next((key for key in ("model.roi_heads.num_classes", "model.num_classes")
                    if isinstance(OmegaConf.select(lazy, key, default=None), int)), "model.roi_heads.num_classes")
        return key, OmegaConf.select(lazy, key, default=None)
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


def check_datasets(specs: Sequence[Union[DatasetSpec, SemSegDatasetSpec]], cfg) -> None:
    """Check each dataset; write its full report to ``OUTPUT_DIR/dataset_check_<name>.txt``.

    Errors (what would fail or train wrongly) raise ``ValueError`` with the first of them and the
    report's path; what Detectron2 tolerates is one ``warning:`` line per dataset. COCO jsons are
    checked against the detector's class count, label PNGs against the semantic head's.
    """
    for spec in specs:
        if isinstance(spec, SemSegDatasetSpec):
            # a LazyConfig names its head's classes where it likes: only the values' range is known then
            semantic_classes = None if lazy_config_of(cfg) is not None else cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
            report = check_sem_seg_dataset(spec.image_root, spec.label_root, num_classes=semantic_classes,
                                           ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                                           num_classes_key="MODEL.SEM_SEG_HEAD.NUM_CLASSES")
            source, remedy = spec.label_root, "fix the labels"
        else:
            num_classes_key, num_classes = num_classes_of(cfg)
            report = check_coco_dataset(spec.json_file, spec.image_root, num_classes=num_classes,
                                        num_classes_key=num_classes_key)
            source, remedy = spec.json_file, "fix it with tools/check_dataset.py --fix"
        path = os.path.join(cfg.OUTPUT_DIR, f"dataset_check_{spec.name}.txt")
        with atomic_output(path, "w", encoding="utf-8") as f:
            f.write(report.format())
        if report.errors:
            raise ValueError(f"dataset {spec.name!r} ({source}): {report.first_error_line()}; "
                             f"full report: {path} ({remedy}, or pass --skip-data-check)")
        if report.warnings:
            print(f"warning: dataset {spec.name!r}: {report.counts(WARNING)}; full report: {path}",
                  file=sys.stderr, flush=True)


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
    cfg = load_training_config(args.config_file, args.opts, training=not args.eval_only)
    cfg.freeze()
    default_setup(recorded_config(cfg), args)
    register_datasets(cfg, args.dataset)
    return cfg


def run(args: argparse.Namespace):
    """The work of one process: evaluate (``--eval-only``) or train, then evaluate."""
    cfg = setup(args)
    Trainer = trainer_class(cfg)  # noqa: N806  (the same trainer for either config kind)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        BackboneCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        model = set_backbone_precision(cfg, model, args.inference_precision)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    if comm.is_main_process():
        for path in remove_checkpoint_temporaries(cfg.OUTPUT_DIR):
            logger.info("Removed %s, left by a run killed while saving a checkpoint", path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume or restarted_by_torchrun())
    return trainer.train()


def describe_error(error: BaseException) -> str:
    """One readable message for an error raised while training.

    A data-loader worker's error arrives with the worker's traceback as its message; the last
    line of that traceback is the error itself.
    """
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        name, separator, rest = last.partition(": ")
        message = rest if separator and name.rsplit(".", 1)[-1].isidentifier() else last
        message = message.strip("\"'") if isinstance(error, KeyError) else message
    if not isinstance(error, USER_ERRORS + (OSError,)):
        message = (f"{type(error).__name__}: {message} (run with --debug or {DEBUG_VARIABLE}=1 "
                   "for the traceback)")
    return message


class _TracebackToLogFilesOnly(logging.Filter):
    """Detectron2's loop logs the traceback of any error before re-raising it; keep it in log.txt,
    off the console, where the error's one line is what the user should see."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.exc_info and record.getMessage().startswith("Exception during training")):
            return True
        source = logging.getLogger(record.name)
        while source is not None:
            for handler in source.handlers:
                name = getattr(getattr(handler, "stream", None), "name", None)  # "<stderr>" or a path
                if isinstance(name, str) and not name.startswith("<") and record.levelno >= handler.level:
                    handler.handle(record)
            source = source.parent if source.propagate else None
        return False


@contextlib.contextmanager
def _tracebacks_off_the_console(enabled: bool):
    if not enabled:
        yield
        return
    loop_logger = logging.getLogger("detectron2.engine.train_loop")
    hide = _TracebackToLogFilesOnly()
    loop_logger.addFilter(hide)
    try:
        yield
    finally:
        loop_logger.removeFilter(hide)


def _run_reporting_errors(args: argparse.Namespace):
    """``run``, with every error as one ``error:`` line: exit status 1 for divergence, 2 otherwise."""
    debug = debugging(args)
    with _tracebacks_off_the_console(not debug):
        try:
            return run(args)
        except TrainingDivergedError as error:
            if debug:
                raise
            if "in another process" not in str(error) or comm.is_main_process():
                print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        except Exception as error:
            if debug:
                raise
            print(f"error: {describe_error(error)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def _check_weights_exist(cfg, args: argparse.Namespace) -> None:
    weights = cfg.MODEL.WEIGHTS
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if weights and "://" not in weights and not resuming and not os.path.exists(weights):
        raise ValueError(f"MODEL.WEIGHTS = {weights!r}: no such file")


def _check_arguments(args: argparse.Namespace) -> None:
    """Fail before any process starts on what would otherwise fail in every one of them."""
    cfg = load_training_config(args.config_file, args.opts, training=not args.eval_only)
    check_training_config(cfg)
    specs = [parse_dataset_spec(spec) for spec in args.dataset]
    _check_weights_exist(cfg, args)
    if args.inference_precision != "fp32" and not args.eval_only:
        raise ValueError(f"--inference-precision {args.inference_precision}: only with --eval-only (training is fp32 "
                         "or SOLVER.AMP)")
    if args.inference_precision == "bf16":
        check_bfloat16_support(torch.device(cfg.MODEL.DEVICE))
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} --machine-rank "
                         f"{args.machine_rank}: need at least one process per machine and "
                         "0 <= machine rank < number of machines")
    # under torchrun every process runs this; one check is enough (a failure stops the others)
    if not args.skip_data_check and os.environ.get("RANK", "0") == "0":
        check_datasets(specs, cfg)


def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    return _main(args) if debugging(args) else exits_cleanly(_main)(args)


def _main(args: argparse.Namespace) -> int:
    _check_arguments(args)
    try:
        launch(_run_reporting_errors, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except SystemExit as stop:
        return int(stop.code or 0)
    except mp.ProcessExitedException as error:
        if error.exit_code in (1, 2):  # the process has printed its own error line
            return error.exit_code
        print(f"error: a training process failed: {error}", file=sys.stderr)
        return 1
    except mp.ProcessRaisedException as error:  # --debug: the traceback is in `error`
        print(f"error: a training process failed: {error}", file=sys.stderr)
        return 1
    return 0
