"""Config of ImageNet pretraining: the detection keys of the body plus ``PRETRAIN.*``.

The body is described by the same ``MODEL.RESNETS.*`` keys a detector uses (so every variant
the modeling layer knows can be pretrained), and the input convention by the detector's own
``INPUT.FORMAT`` / ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``: what pretraining feeds the body
is then exactly what a detector with those keys feeds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode as CN

from ..config import get_default_config, merge_overrides
from ..modeling.arch import ConfigError, ResNetArch
from ..weights.convert import TORCHVISION_CONVENTION, InputConvention

LR_SCHEDULERS = ("step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
AUTO_AUGMENTS = ("", "ta_wide", "randaugment", "autoaugment")
INTERPOLATIONS = ("bilinear", "bicubic")

#: Keys that only change how a run executes, not what it computes; a resumed run may change them.
RUNTIME_KEYS = ("MODEL.DEVICE", "PRETRAIN.NUM_WORKERS", "PRETRAIN.LOG_PERIOD", "PRETRAIN.CHECKPOINT_PERIOD")


def add_pretrain_config(cfg: CN) -> CN:
    """Add ``PRETRAIN.*`` to ``cfg`` (in place) and set the body and input defaults of pretraining."""
    # A body that learns: batch statistics, nothing frozen. Stride on the 3x3 and torchvision's
    # RGB statistics, the convention of every modern ImageNet recipe.
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = TORCHVISION_CONVENTION.stride_in_1x1
    cfg.INPUT.FORMAT = TORCHVISION_CONVENTION.input_format
    cfg.MODEL.PIXEL_MEAN = list(TORCHVISION_CONVENTION.pixel_mean)
    cfg.MODEL.PIXEL_STD = list(TORCHVISION_CONVENTION.pixel_std)

    p = cfg.PRETRAIN = CN()
    p.NUM_CLASSES = 0  # 0: the number of class folders in train/
    p.EPOCHS = 90
    p.BATCH_SIZE = 256  # images per iteration over all processes together
    p.BASE_LR = 0.1  # for 256 images; the rate used is BASE_LR * BATCH_SIZE / 256
    p.MOMENTUM = 0.9
    p.NESTEROV = False
    p.WEIGHT_DECAY = 1e-4
    p.WEIGHT_DECAY_NORM_AND_BIAS = True  # False: no decay on norm weights and biases
    p.LR_SCHEDULER = "step"
    p.STEPS = (30, 60)  # epochs at which the rate is multiplied by GAMMA ("step")
    p.GAMMA = 0.1
    p.WARMUP_EPOCHS = 0.0  # linear warm-up from WARMUP_FACTOR x the rate (fractions allowed)
    p.WARMUP_FACTOR = 0.01
    p.MIN_LR_FACTOR = 0.0  # the floor of "cosine", as a fraction of the rate
    p.LABEL_SMOOTHING = 0.0
    p.MIXUP_ALPHA = 0.0  # 0 turns mixup off
    p.CUTMIX_ALPHA = 0.0  # 0 turns cutmix off; with both on, each batch gets one of the two
    p.CROP_SIZE = 224  # random-resized crop for training
    p.CROP_SCALE = (0.08, 1.0)
    p.VAL_CROP_SIZE = 0  # 0: CROP_SIZE
    p.VAL_RESIZE_SIZE = 0  # shorter side before the centre crop; 0: VAL_CROP_SIZE * 256 / 224
    p.INTERPOLATION = "bilinear"
    p.AUTO_AUGMENT = ""
    p.RANDOM_ERASE = 0.0
    p.NUM_WORKERS = 8  # data-loading processes per training process
    p.PRECISION = "fp32"
    p.SEED = 0
    p.LOG_PERIOD = 20  # iterations between TensorBoard points and progress-bar refreshes
    p.CHECKPOINT_PERIOD = 0  # also keep checkpoint_epochNNNN.pth every N epochs; 0: only the latest
    p.EMA = CN()
    p.EMA.ENABLED = False
    p.EMA.DECAY = 0.9999  # per update
    p.EMA.UPDATE_PERIOD = 1  # iterations between updates
    return cfg


def get_pretrain_default_config() -> CN:
    """Detectron2's defaults, this package's keys, then the pretraining keys and defaults."""
    return add_pretrain_config(get_default_config())


def load_pretrain_config(config_file: Optional[str], overrides: Sequence[str] = ()) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` overrides; validated."""
    cfg = get_pretrain_default_config()
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ValueError(f"{config_file}: no such config file")
        try:
            cfg.merge_from_file(str(config_file))
        except KeyError as e:
            raise ValueError(f"{config_file}: {e.args[0] if e.args else e}") from None
    merge_overrides(cfg, overrides)
    return validate(cfg)


def config_from_yaml_text(text: str) -> CN:
    """A config stored in a checkpoint (``cfg.dump()``), over today's defaults."""
    cfg = get_pretrain_default_config()
    try:
        cfg.merge_from_other_cfg(CN.load_cfg(text))
    except KeyError as e:
        raise ValueError(f"the checkpoint's config has a key this version does not know: "
                         f"{e.args[0] if e.args else e}") from None
    return cfg


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def validate(cfg: CN) -> CN:
    """Raise :class:`ConfigError` naming the key, value and what is allowed; return ``cfg``."""
    arch = ResNetArch.from_cfg(cfg)
    _check(arch.norm != "FrozenBN", "MODEL.RESNETS.NORM", arch.norm,
           "BN, SyncBN, GN or '' (frozen statistics cannot be learned)")
    p = cfg.PRETRAIN
    _check(cfg.INPUT.FORMAT in ("RGB", "BGR"), "INPUT.FORMAT", cfg.INPUT.FORMAT, "RGB or BGR")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        value = list(cfg.MODEL[key])
        _check(len(value) == 3, f"MODEL.{key}", value, "three numbers, one per channel")
    _check(all(s > 0 for s in cfg.MODEL.PIXEL_STD), "MODEL.PIXEL_STD", list(cfg.MODEL.PIXEL_STD), "positive numbers")
    for key in ("EPOCHS", "BATCH_SIZE", "CROP_SIZE", "EMA.UPDATE_PERIOD", "LOG_PERIOD"):
        value = p[key] if "." not in key else p.EMA[key.split(".")[1]]
        _check(isinstance(value, int) and value >= 1, f"PRETRAIN.{key}", value, "a positive integer")
    _check(p.NUM_CLASSES >= 0, "PRETRAIN.NUM_CLASSES", p.NUM_CLASSES, "0 (count the class folders) or more")
    _check(p.NUM_WORKERS >= 0, "PRETRAIN.NUM_WORKERS", p.NUM_WORKERS, "0 (load in the training process) or more")
    _check(p.CHECKPOINT_PERIOD >= 0, "PRETRAIN.CHECKPOINT_PERIOD", p.CHECKPOINT_PERIOD, "0 or more epochs")
    # a 32-pixel crop is the smallest that leaves res5 (stride 32) a whole pixel
    for key in ("CROP_SIZE", "VAL_CROP_SIZE"):
        _check(p[key] >= 32 or (key == "VAL_CROP_SIZE" and p[key] == 0), f"PRETRAIN.{key}", p[key],
               "at least 32 pixels" + (" (or 0: CROP_SIZE)" if key == "VAL_CROP_SIZE" else ""))
    _check(p.VAL_RESIZE_SIZE == 0 or p.VAL_RESIZE_SIZE >= val_crop_size(cfg), "PRETRAIN.VAL_RESIZE_SIZE",
           p.VAL_RESIZE_SIZE, f"0 or at least the validation crop ({val_crop_size(cfg)})")
    scale = tuple(p.CROP_SCALE)
    _check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "PRETRAIN.CROP_SCALE", scale,
           "(min, max) fractions of the image area with 0 < min <= max <= 1")
    _check(p.BASE_LR > 0, "PRETRAIN.BASE_LR", p.BASE_LR, "a positive number")
    _check(p.LR_SCHEDULER in LR_SCHEDULERS, "PRETRAIN.LR_SCHEDULER", p.LR_SCHEDULER, f"one of {list(LR_SCHEDULERS)}")
    steps = list(p.STEPS)
    _check(steps == sorted(steps) and all(0 < s for s in steps), "PRETRAIN.STEPS", tuple(steps),
           "increasing positive epochs")
    _check(0 <= p.WARMUP_EPOCHS <= p.EPOCHS, "PRETRAIN.WARMUP_EPOCHS", p.WARMUP_EPOCHS,
           f"0 to PRETRAIN.EPOCHS ({p.EPOCHS})")
    _check(0 < p.WARMUP_FACTOR <= 1, "PRETRAIN.WARMUP_FACTOR", p.WARMUP_FACTOR, "in (0, 1]")
    _check(0 <= p.MIN_LR_FACTOR < 1, "PRETRAIN.MIN_LR_FACTOR", p.MIN_LR_FACTOR, "in [0, 1)")
    _check(0 <= p.LABEL_SMOOTHING < 1, "PRETRAIN.LABEL_SMOOTHING", p.LABEL_SMOOTHING, "in [0, 1)")
    for key in ("MIXUP_ALPHA", "CUTMIX_ALPHA", "WEIGHT_DECAY", "MOMENTUM"):
        _check(p[key] >= 0, f"PRETRAIN.{key}", p[key], "0 or more")
    _check(0 <= p.RANDOM_ERASE <= 1, "PRETRAIN.RANDOM_ERASE", p.RANDOM_ERASE, "a probability in [0, 1]")
    _check(p.AUTO_AUGMENT in AUTO_AUGMENTS, "PRETRAIN.AUTO_AUGMENT", p.AUTO_AUGMENT, f"one of {list(AUTO_AUGMENTS)}")
    _check(p.INTERPOLATION in INTERPOLATIONS, "PRETRAIN.INTERPOLATION", p.INTERPOLATION,
           f"one of {list(INTERPOLATIONS)}")
    _check(p.PRECISION in PRECISIONS, "PRETRAIN.PRECISION", p.PRECISION, f"one of {list(PRECISIONS)}")
    _check(0 < p.EMA.DECAY < 1, "PRETRAIN.EMA.DECAY", p.EMA.DECAY, "in (0, 1)")
    return cfg


# ------------------------------------------------------------------------ derived values
def learning_rate(cfg: CN) -> float:
    """The peak rate: linear scaling with the batch (Goyal et al., 2017)."""
    return cfg.PRETRAIN.BASE_LR * cfg.PRETRAIN.BATCH_SIZE / 256


def val_crop_size(cfg: CN) -> int:
    return cfg.PRETRAIN.VAL_CROP_SIZE or cfg.PRETRAIN.CROP_SIZE


def val_resize_size(cfg: CN) -> int:
    # the paper's 256 -> 224 ratio, kept at any crop size
    return cfg.PRETRAIN.VAL_RESIZE_SIZE or round(val_crop_size(cfg) * 256 / 224)


def input_convention(cfg: CN) -> InputConvention:
    """What the body is trained on, recorded in checkpoints and carried into converted weights."""
    return InputConvention(cfg.INPUT.FORMAT, tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
                           tuple(float(v) for v in cfg.MODEL.PIXEL_STD), bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1))


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: list(node) if isinstance(node, tuple) else node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_differences(stored: CN, requested: CN, ignore: Sequence[str] = RUNTIME_KEYS) -> List[Tuple[str, Any, Any]]:
    """``(key, stored value, requested value)`` for every key that differs, except ``ignore``."""
    a, b = _flatten(stored), _flatten(requested)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in ignore and _as_lists(a.get(k)) != _as_lists(b.get(k))]


def _as_lists(value: Any) -> Any:
    # a config read back from a checkpoint's YAML has lists where the file's defaults have tuples
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value
