# The "Nx" multi-step schedules: 1x = 90k iterations of 16 images (about 12 COCO epochs), the rate
# dropping by 10 twice near the end ("Rethinking ImageNet Pre-training", Sec. 4).
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def default_X_scheduler(num_X):  # noqa: N802,N803  (Detectron2's name)
    """The learning-rate multiplier of an ``num_X``-times-1x schedule (scale-invariant in the
    number of iterations: ``train.max_iter`` sets the length)."""
    total = num_X * 90000
    # up to 2x the drops sit at 2/3 and 8/9 of 1x; longer schedules drop 60k and 20k before the end
    milestones = [60000, 80000, 90000] if num_X <= 2 else [total - 60000, total - 20000, total]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=milestones),
        warmup_length=1000 / total,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
