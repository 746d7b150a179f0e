"""Config keys this package adds to Detectron2's, with their defaults.

Detectron2's own keys (``MODEL.RESNETS.DEPTH``, ``NORM``, ``NUM_GROUPS``, ``WIDTH_PER_GROUP``,
``STRIDE_IN_1X1``, ``RES2_OUT_CHANNELS``, ``STEM_OUT_CHANNELS``, ``RES5_DILATION``,
``OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.FPN.*``) keep their meaning; the keys
below only add to them, and their defaults leave Detectron2's behaviour unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from detectron2.config import CfgNode as CN

#: full key -> default
NEW_KEYS: Dict[str, Any] = {}

#: Training keys (tools/train_net.py): the optimizer ("SGD" or "AdamW"), the mixed-precision
#: dtype ("auto": float16 on CUDA, bfloat16 on CPU) and the evaluation metric that picks
#: ``model_best.pth`` ("" = none).
NEW_KEYS.update({
    "SOLVER.OPTIMIZER": "SGD",
    "SOLVER.AMP.PRECISION": "auto",
    "TEST.BEST_METRIC": "bbox/AP",
})

#: ResNet variants (README "Variants"); read through ``ResNetArch.KEYS``, where each is checked.
#: Deformable convolutions use Detectron2's own ``DEFORM_ON_PER_STAGE``, ``DEFORM_MODULATED`` and
#: ``DEFORM_NUM_GROUPS``, and DC5 its ``RES5_DILATION``.
NEW_KEYS.update({
    "MODEL.RESNETS.STEM_TYPE": "basic",  # "basic" (7x7), "deep" (three 3x3, ResNet-C) or "tiered"
    "MODEL.RESNETS.STEM_WIDTH": 32,  # inner width of the deep stem
    "MODEL.RESNETS.SHORTCUT": "B",  # the paper's options "A", "B", "C"
    "MODEL.RESNETS.AVG_DOWN": False,  # ResNet-D: average-pool, then a stride-1 projection
    "MODEL.RESNETS.PREACT": False,  # ResNet v2 pre-activation blocks
    "MODEL.RESNETS.SE_RATIO": 0.0,  # squeeze-and-excitation hidden fraction; 0 = none
    "MODEL.RESNETS.OUTPUT_STRIDE": 32,  # 32, 16 or 8 (res4/res5 dilated instead of strided)
    "MODEL.RESNETS.RES5_MULTI_GRID": [1, 1, 1],  # per-block multipliers of res5's dilation
    "MODEL.RESNETS.DILATION_MODE": "detectron2",  # or "torchvision"
    "MODEL.RESNETS.ZERO_INIT_RESIDUAL": False,  # start each branch's last norm scale at zero
    "MODEL.RESNETS.DROP_PATH_RATE": 0.0,  # stochastic depth at the last block
    "MODEL.RESNETS.CHECKPOINT_STAGES": [],  # "stem" and/or stages run under activation checkpointing
    "MODEL.RESNETS.NORM_EVAL": False,  # BatchNorm statistics frozen, affine weights trained
    "MODEL.RESNETS.CHANNELS_LAST": False,  # backbone (and FPN) in torch.channels_last
    "MODEL.RESNETS.PRESET": "",  # "resnet_d", "seresnext", "resnet_rs", "wide", "deeplab_stem"
    "MODEL.RESNETS.NUM_BLOCKS": [],  # blocks of res2..res5, for any DEPTH (= 2 + 2 or 3 per block)
    "MODEL.RESNETS.STEM_POOL": "max",  # or "conv": ResNet-RS's strided 3x3 convolution
    "MODEL.RESNETS.ANTI_ALIAS": "",  # "avg" or "blur": anti-aliased downsampling (timm's aa_layer)
    "MODEL.RESNETS.ECA": False,  # ECA channel attention in every block (instead of SE)
    # the ConvNeXt road (README "The ConvNeXt road"); PRESET "convnext" is ConvNeXt-T
    "MODEL.RESNETS.DEPTHWISE": False,  # the bottleneck's spatial convolution has a group per channel
    "MODEL.RESNETS.DEPTHWISE_FIRST": False,  # depthwise convolution first, then the two 1x1
    "MODEL.RESNETS.KERNEL_SIZE": 3,  # the blocks' spatial convolutions (ConvNeXt: 7)
    "MODEL.RESNETS.ACTIVATION": "relu",  # or "gelu"
    "MODEL.RESNETS.SINGLE_ACTIVATION": False,  # one activation per block, before its last convolution
    "MODEL.RESNETS.SINGLE_NORM": False,  # one norm per block, after its first convolution
    "MODEL.RESNETS.DOWNSAMPLE": "block",  # or "separate": norm + 2x2 stride-2 conv before res3..res5
    "MODEL.RESNETS.LAYER_SCALE": 0.0,  # initial per-channel scale of each branch; 0 = none
})


#: Semantic segmentation (README "Semantic segmentation"): the keys of Detectron2's DeepLab project,
#: read by the DeepLab heads (modeling/segmentation.py) and the training loop; Detectron2's own
#: ``MODEL.SEM_SEG_HEAD.*`` and ``INPUT.CROP.*`` keep their meaning. ``ASPP_DILATIONS: []`` follows
#: the ASPP input's stride (6/12/18 at 16, 12/24/36 at 8).
NEW_KEYS.update({
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": "hard_pixel_mining",  # or "cross_entropy"
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": ["res2"],  # v3+ decoder inputs besides the ASPP's
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS": [48],  # their 1x1 projection widths
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS": 256,
    "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS": [],
    "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT": 0.1,
    "MODEL.SEM_SEG_HEAD.ASPP_POOL_OVER_CROP": True,  # image pooling over crop-sized windows (else global)
    "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV": False,
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,  # re-draw crops where one class covers more
    "SOLVER.POLY_LR_POWER": 0.9,  # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR"
    "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,
})


def add_resnet_backbones_config(cfg: CN) -> CN:
    """Add every key of this package to ``cfg`` (in place) with its default; returns ``cfg``."""
    for key, default in NEW_KEYS.items():
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = CN()
            node = node[part]
        if leaf not in node:
            node[leaf] = default
    return cfg


def get_default_config() -> CN:
    """Detectron2's defaults with this package's keys added; ``MODEL.DEVICE`` is ``cpu`` without CUDA."""
    import torch
    from detectron2.config import get_cfg

    cfg = add_resnet_backbones_config(get_cfg())
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_config(config_file: str, overrides: Optional[List[str]] = None) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` overrides.

    Unknown keys or a missing file raise ``ValueError`` naming the file or key.
    """
    path = Path(config_file)
    if not path.is_file():
        raise ValueError(f"{config_file}: no such config file")
    cfg = get_default_config()
    try:
        cfg.merge_from_file(str(path))
    except KeyError as e:
        raise ValueError(f"{config_file}: {e.args[0] if e.args else e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # in the file at fault, which may be a _BASE_
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else config_file
        raise ValueError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    return merge_overrides(cfg, overrides)


def merge_overrides(cfg: CN, overrides: Optional[List[str]]) -> CN:
    """Apply ``KEY VALUE`` pairs; an unknown key or a bad value raises ``ValueError`` naming that pair."""
    overrides = list(overrides or [])
    if len(overrides) % 2:
        raise ValueError(f"command-line overrides are KEY VALUE pairs; {overrides[-1]!r} has no value")
    for key, value in zip(overrides[0::2], overrides[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, AssertionError, ValueError) as e:
            raise ValueError(f"command-line override {key} {value}: {e.args[0] if e.args else e}") from None
    return cfg
