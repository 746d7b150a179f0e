"""Detectron2's ``DefaultTrainer`` with the pieces this package changes.

* The step (:class:`TrainStep`) runs on CPU and GPU, in float32 or mixed precision (float16
  with a gradient scaler on CUDA, bfloat16 elsewhere), and stops on a non-finite loss with the
  iteration and every loss term in the message, on every process at once.
* The model is wrapped for several processes by :func:`wrap_distributed` (CPU and GPU).
* Checkpoints go through :class:`BackboneCheckpointer`: written atomically, read safely,
  strict about the backbone.
* Evaluation uses :class:`FastCOCOEvaluator` (and mIoU for segmentation models, see
  ``segmentation.py``), and :class:`BestCheckpointer` keeps the checkpoint with the best
  ``TEST.BEST_METRIC``, remembering it across ``--resume``.
"""
from __future__ import annotations

import logging
import math
import os
import time
import weakref
from typing import Dict, Optional

import torch
import torch.distributed as dist
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.solver import build_optimizer as detectron2_build_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.datasets import FileNamingDatasetMapper
from ..evaluation import FastCOCOEvaluator
from ..weights.checkpoint import BackboneCheckpointer
from .launch import wrap_distributed
from .preemption import PreemptionCheckpointer, resumable_sampler, restart_data_stream, rng_state
from .segmentation import (SEGMENTATION_ARCHITECTURES, build_lr_scheduler, build_segmentation_evaluator,
                           is_semantic_segmentor, sem_seg_train_augmentations)

logger = logging.getLogger(__name__)

AMP_PRECISIONS = ("auto", "float16", "bfloat16")
OPTIMIZERS = ("SGD", "AdamW")


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration and the loss terms."""


def check_training_config(cfg) -> None:
    """Reject values of this package's training keys, naming the key (before any process starts)."""
    for key, value, allowed in (("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, OPTIMIZERS),
                                ("SOLVER.AMP.PRECISION", cfg.SOLVER.AMP.PRECISION, AMP_PRECISIONS)):
        if value not in allowed:
            raise ValueError(f"{key} = {value!r} is not allowed: one of {list(allowed)}")


def amp_dtype(cfg) -> Optional[torch.dtype]:
    """The autocast dtype for ``SOLVER.AMP``, or None when mixed precision is off."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    check_training_config(cfg)
    precision = cfg.SOLVER.AMP.PRECISION
    if precision == "auto":
        # float16 needs a gradient scaler and is slow on CPUs; bfloat16 needs neither
        precision = "float16" if cfg.MODEL.DEVICE.startswith("cuda") else "bfloat16"
    return getattr(torch, precision)


def _format_losses(loss_dict: Dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{name}={value.item():.4g}" for name, value in loss_dict.items())


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER``) with the same parameter groups and clipping.

    AdamW uses ``SOLVER.BASE_LR``, ``WEIGHT_DECAY`` (and ``_NORM``, ``_BIAS``), ``BIAS_LR_FACTOR``
    and ``CLIP_GRADIENTS`` as SGD does; ``MOMENTUM`` and ``NESTEROV`` do not apply to it.
    """
    check_training_config(cfg)
    if cfg.SOLVER.OPTIMIZER == "SGD":
        return detectron2_build_optimizer(cfg, model)
    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


class TrainStep(SimpleTrainer):
    """One SGD step: forward (optionally under autocast), finiteness check, backward, update."""

    #: the end of the divergence message, in the keys of the config the run was started from
    divergence_advice = ("Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or set "
                         "SOLVER.CLIP_GRADIENTS.ENABLED True.")

    def __init__(self, model, data_loader, optimizer, *, autocast_dtype: Optional[torch.dtype] = None):
        super().__init__(model, data_loader, optimizer)
        self.device_type = next(model.parameters()).device.type
        self.autocast_dtype = autocast_dtype
        use_scaler = autocast_dtype == torch.float16 and self.device_type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self._last_finite_losses: Dict[str, torch.Tensor] = {}

    def run_step(self):
        assert self.model.training, "the model was put in eval mode during training"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        try:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        except FloatingPointError as error:  # Detectron2's box heads check their own outputs
            loss_dict, losses, failure = {}, torch.tensor(float("nan")), str(error)
        else:
            failure = ""
        self._stop_if_diverged(losses, loss_dict, failure)
        self._last_finite_losses = {name: value.detach() for name, value in loss_dict.items()}

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _stop_if_diverged(self, losses: torch.Tensor, loss_dict: Dict[str, torch.Tensor], failure: str) -> None:
        finite = torch.isfinite(losses.detach()).float().to(losses.device)
        everywhere = finite.clone()
        if comm.get_world_size() > 1:
            # every process must stop, or the others would wait forever in the next all-reduce
            dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)
        if everywhere.item() == 1:
            return
        if finite.item() == 1:
            message = f"the loss became NaN or infinite at iteration {self.iter} in another process"
        else:
            where = "" if comm.get_world_size() == 1 else f" (process {comm.get_rank()})"
            if loss_dict:
                detail = f"total {losses.item():.4g}; {_format_losses(loss_dict)}"
            else:
                previous = self._last_finite_losses
                detail = failure + (f" Losses of the iteration before: {_format_losses(previous)}"
                                    if previous else "")
            message = f"the loss became NaN or infinite at iteration {self.iter}{where}: {detail}"
        raise TrainingDivergedError(message.rstrip(".") + ". " + self.divergence_advice)

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler.is_enabled():
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler.is_enabled() and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class BestCheckpointer(HookBase):
    """Save ``<prefix>.pth`` whenever the evaluation's ``metric`` improves on the best so far.

    Runs after :class:`~detectron2.engine.hooks.EvalHook`. Unlike Detectron2's hook of the same
    name it keeps the best value in the training checkpoint, so a resumed run does not replace
    the best model with a worse one, and it does not move ``last_checkpoint`` (``--resume``
    must continue from the latest iteration, not from the best one).
    """

    def __init__(self, eval_period: int, checkpointer: BackboneCheckpointer, metric: str = "bbox/AP",
                 file_prefix: str = "model_best"):
        self.eval_period = eval_period
        self.checkpointer = checkpointer
        self.metric = metric
        self.file_prefix = file_prefix
        self.best_value: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _check(self) -> None:
        latest = self.trainer.storage.latest().get(self.metric)
        if latest is None:
            logger.warning("TEST.BEST_METRIC %r was not computed by the evaluation; no best checkpoint",
                           self.metric)
            return
        value, iteration = latest
        if not math.isfinite(value) or (self.best_value is not None and value <= self.best_value):
            return
        self.best_value, self.best_iter = float(value), int(iteration)
        self.checkpointer.save(self.file_prefix, tag_last=False, iteration=iteration)
        logger.info("New best %s = %.4f at iteration %d: saved %s.pth", self.metric, value, iteration,
                    self.file_prefix)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.eval_period > 0 and next_iter % self.eval_period == 0 and next_iter != self.trainer.max_iter:
            self._check()

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._check()

    def state_dict(self):
        return {"best_value": self.best_value, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict):
        self.best_value, self.best_iter = state_dict["best_value"], state_dict["best_iter"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for CPU and GPU, one or many processes, with the pieces above."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_distributed(model, broadcast_buffers=False)
        self._trainer = TrainStep(model, data_loader, optimizer, autocast_dtype=amp_dtype(cfg))

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = BackboneCheckpointer(model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # Detectron2 v0.6 saves only the iteration and the hooks; the optimizer (momentum) and the
    # gradient scaler must survive --resume as well (as on detectron2's main branch), and so must
    # the data position and the random state, for a resumed run to continue the same stream
    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        sampler = resumable_sampler(self._trainer.data_loader)
        per_process = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        state["resume"] = {"data": sampler.state_dict((self.iter + 1) * per_process) if sampler else {},
                           # every process's (gathered at a preemption), else the first process's
                           "rng": getattr(self, "rng_states", None) or [rng_state()]}
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        self._resume_state = state_dict.get("resume")

    def resume_or_load(self, resume=True):
        self._resume_state = None
        super().resume_or_load(resume=resume)
        if resume and self._resume_state:
            states = self._resume_state["rng"]
            restart_data_stream(self._trainer, self._resume_state["data"],
                                states[comm.get_rank()] if comm.get_rank() < len(states) else None)

    def build_hooks(self):
        built = super().build_hooks()
        metric = self.cfg.TEST.BEST_METRIC
        if metric and comm.is_main_process():
            # after EvalHook (which produces the metric), before the writers
            eval_index = next(i for i, h in enumerate(built) if isinstance(h, hooks.EvalHook))
            built.insert(eval_index + 1, BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, metric))
        built.append(PreemptionCheckpointer())  # last: the iteration's own hooks have run
        return built

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    # errors reading an image name the file, in the training process and in data-loader workers
    @classmethod
    def build_train_loader(cls, cfg):
        if is_semantic_segmentor(cfg):
            mapper = FileNamingDatasetMapper(cfg, True, augmentations=sem_seg_train_augmentations(cfg))
        else:
            mapper = FileNamingDatasetMapper(cfg, True)
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, False))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # Detectron2's, and DeepLab's WarmupPolyLR

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if is_semantic_segmentor(cfg):
            return build_segmentation_evaluator(cfg, dataset_name, output_folder)
        # The tasks come from the model, not from its predictions (Detectron2's default): a mask
        # model that detects nothing yet still gets its segm AP of 0, and its curves stay whole.
        tasks = ["bbox"] + ["segm"] * cfg.MODEL.MASK_ON + ["keypoints"] * cfg.MODEL.KEYPOINT_ON
        coco = FastCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
        if cfg.MODEL.META_ARCHITECTURE in SEGMENTATION_ARCHITECTURES:  # Panoptic FPN: and its semantic branch
            return build_segmentation_evaluator(cfg, dataset_name, output_folder, coco_evaluator=coco)
        return coco
