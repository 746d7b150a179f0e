"""What training and evaluating segmentation models adds to the detection path.

* :func:`build_lr_scheduler`: Detectron2's schedules, plus ``SOLVER.LR_SCHEDULER_NAME
  "WarmupPolyLR"`` (DeepLab's poly schedule, as Detectron2's DeepLab project has it).
* :func:`sem_seg_train_augmentations`: the project's training augmentation (resize, a crop whose
  largest class covers at most ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, flip).
* :func:`build_segmentation_evaluator`: mIoU for ``SemanticSegmentor``; COCO AP plus mIoU for
  ``PanopticFPN`` (panoptic quality needs panopticapi, which is not on the package index).
"""
from __future__ import annotations

import math
from typing import List

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver import build_lr_scheduler as detectron2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, _get_warmup_factor_at_iter
from fvcore.common.param_scheduler import ParamScheduler

from ..evaluation.sem_seg import SemSegEvaluator

__all__ = ["SEGMENTATION_ARCHITECTURES", "PolyLRMultiplier", "build_lr_scheduler", "build_segmentation_evaluator",
           "is_semantic_segmentor", "sem_seg_train_augmentations"]

SEGMENTATION_ARCHITECTURES = ("SemanticSegmentor", "PanopticFPN")


def is_semantic_segmentor(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"


class PolyLRMultiplier(ParamScheduler):
    """``warmup(iter) * (1 - iter / max_iter) ** power``, held at ``constant_ending`` once it falls
    below it after warm-up: Detectron2's DeepLab ``WarmupPolyLR``, as an fvcore schedule for
    Detectron2's ``LRMultiplier`` (which checkpoints it like the built-in schedules)."""

    def __init__(self, max_iter: int, *, power: float = 0.9, constant_ending: float = 0.0, warmup_iters: int = 0,
                 warmup_factor: float = 0.001, warmup_method: str = "linear"):
        self.max_iter, self.power, self.constant_ending = max_iter, power, constant_ending
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor, warmup_method

    def __call__(self, where: float) -> float:
        iteration = round(where * self.max_iter)
        warmup = _get_warmup_factor_at_iter(self.warmup_method, iteration, self.warmup_iters, self.warmup_factor)
        poly = math.pow(max(1.0 - iteration / self.max_iter, 0.0), self.power)
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warmup * poly


def build_lr_scheduler(cfg, optimizer):
    """Detectron2's ``build_lr_scheduler``, and ``WarmupPolyLR`` (``SOLVER.POLY_LR_*``)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return detectron2_build_lr_scheduler(cfg, optimizer)
    multiplier = PolyLRMultiplier(
        cfg.SOLVER.MAX_ITER, power=cfg.SOLVER.POLY_LR_POWER, constant_ending=cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS, warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_method=cfg.SOLVER.WARMUP_METHOD)
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=cfg.SOLVER.MAX_ITER)


def sem_seg_train_augmentations(cfg) -> List[T.Augmentation]:
    """Resize the shorter side, crop (re-drawn where one class would cover too much), flip."""
    augmentations: List[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    augmentations.append(T.RandomFlip())
    return augmentations


def _checked_sem_seg_metadata(cfg, dataset_name: str) -> None:
    """The dataset's classes and ignore label must be the head's: a mismatch would be scored wrong."""
    metadata = MetadataCatalog.get(dataset_name)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if not metadata.get("stuff_classes"):
        # a folder registered with --dataset NAME=IMAGES:LABELS has no class names
        metadata.stuff_classes = [f"class_{index}" for index in range(num_classes)]
    if len(metadata.stuff_classes) != num_classes:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes} but dataset {dataset_name!r} has "
                         f"{len(metadata.stuff_classes)} classes {list(metadata.stuff_classes)}")
    ignore_label = metadata.get("ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    if ignore_label != cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE = {cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but dataset "
                         f"{dataset_name!r} marks ignored pixels {ignore_label}")
    if metadata.get("ignore_label") is None:
        metadata.ignore_label = ignore_label


def build_segmentation_evaluator(cfg, dataset_name: str, output_folder: str, coco_evaluator=None):
    """mIoU for a semantic segmentor; ``coco_evaluator`` and mIoU together for Panoptic FPN."""
    _checked_sem_seg_metadata(cfg, dataset_name)
    sem_seg = SemSegEvaluator(dataset_name, output_dir=output_folder)
    if coco_evaluator is None:
        return sem_seg
    return DatasetEvaluators([coco_evaluator, sem_seg])

