"""Training: Detectron2's trainer with the pieces this package changes, and process launching."""
from .launch import launch, restarted_by_torchrun, started_by_torchrun, wrap_distributed
from .trainer import BestCheckpointer, Trainer, TrainingDivergedError, TrainStep, amp_dtype

__all__ = ["BestCheckpointer", "Trainer", "TrainStep", "TrainingDivergedError", "amp_dtype", "launch",
           "restarted_by_torchrun", "started_by_torchrun", "wrap_distributed"]
