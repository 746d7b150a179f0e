"""Optimizer, learning-rate schedule and weight EMA of pretraining."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import learning_rate


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> List[dict]:
    """One group with decay and, unless ``decay_norm_and_bias``, one without for 1-d parameters.

    Norm scales/shifts and biases are the 1-d parameters; decaying them only pulls BN towards
    zero output, which modern recipes avoid.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.SGD:
    p = cfg.PRETRAIN
    groups = parameter_groups(model, p.WEIGHT_DECAY, p.WEIGHT_DECAY_NORM_AND_BIAS)
    return torch.optim.SGD(groups, lr=learning_rate(cfg), momentum=p.MOMENTUM, nesterov=p.NESTEROV)


class LrSchedule:
    """The factor of the peak rate at an iteration: linear warm-up, then steps or a cosine.

    It is evaluated per iteration with epochs as the unit, so ``STEPS: (30, 60)`` changes the rate
    exactly at the start of epochs 30 and 60 whatever the batch size. A plain object with plain
    attributes: ``LambdaLR.state_dict`` stores them, and the checkpoint stays loadable with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, scheduler: str, iters_per_epoch: int, epochs: int, steps=(), gamma: float = 0.1,
                 warmup_epochs: float = 0.0, warmup_factor: float = 0.01, min_factor: float = 0.0):
        self.scheduler = scheduler
        self.iters_per_epoch = int(iters_per_epoch)
        self.epochs = int(epochs)
        self.steps = [float(s) for s in steps]
        self.gamma = float(gamma)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_factor = float(warmup_factor)
        self.min_factor = float(min_factor)

    @classmethod
    def from_config(cls, cfg, iters_per_epoch: int) -> "LrSchedule":
        p = cfg.PRETRAIN
        return cls(p.LR_SCHEDULER, iters_per_epoch, p.EPOCHS, p.STEPS, p.GAMMA, p.WARMUP_EPOCHS, p.WARMUP_FACTOR,
                   p.MIN_LR_FACTOR)

    def __call__(self, iteration: int) -> float:
        epoch = iteration / self.iters_per_epoch
        if self.scheduler == "step":
            factor = self.gamma ** sum(epoch >= s for s in self.steps)
        else:
            span = self.epochs - self.warmup_epochs
            progress = min(max(epoch - self.warmup_epochs, 0.0) / span, 1.0) if span > 0 else 0.0
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            factor *= self.warmup_factor + (1 - self.warmup_factor) * alpha
        return factor


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> LambdaLR:
    """Stepped once per iteration."""
    return LambdaLR(optimizer, LrSchedule.from_config(cfg, iters_per_epoch))


class WeightEMA(AveragedModel):
    """Exponential moving average of the weights and BN statistics, updated every ``period`` iterations.

    ``AveragedModel`` copies the model on its first update; during warm-up the copy is renewed
    at each update, because averaging in the weights of the first, chaotic iterations only delays
    the average (torchvision's recipe does the same).
    """

    def __init__(self, model: nn.Module, decay: float, period: int = 1):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.period = period

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, iteration: int, in_warmup: bool) -> None:
        """Called after optimizer step ``iteration`` (counted from 1)."""
        if iteration % self.period:
            return
        self.update_parameters(model)
        if in_warmup:
            self.n_averaged.zero_()
