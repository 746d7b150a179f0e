"""What a ResNet body is made of, read from a Detectron2 config and checked before building.

``ResNetArch`` is the one place that knows the depth table, the config key of every
architectural choice, the presets and which combinations are allowed. The builders, the weight
converter (which infers an ``ResNetArch`` from a state dict) and the analysis tool all go
through it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .blocks import ACTIVATIONS, SHORTCUT_TYPES
from .layers import ANTI_ALIAS_TYPES, GN_GROUPS, NORM_NAMES
from .stems import STEM_POOLS, STEM_TYPES

#: depth -> (block type, blocks per stage res2..res5). The one depth table.
DEPTHS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
FEATURE_NAMES = ("stem",) + STAGE_NAMES

#: output stride -> base dilation of res4 and res5 (the stages that stop striding)
OUTPUT_STRIDES: Dict[int, Tuple[int, int]] = {32: (1, 1), 16: (1, 2), 8: (2, 4)}

#: where a stage downsamples: "block", its first block strides (with a projection shortcut);
#: "separate", ConvNeXt's norm and 2x2 stride-2 convolution before the stage (``resN.downsample``)
DOWNSAMPLE_TYPES = ("block", "separate")

#: "detectron2": every block of a dilated stage uses the stage's dilation;
#: "torchvision": the first block keeps the previous dilation (torchvision and timm)
DILATION_MODES = ("detectron2", "torchvision")

#: preset -> the fields it implies. Each sets what its reference model (timm, torchvision,
#: Detectron2's DeepLab) defines; all but the stem-only one put the stride on the 3x3, as
#: those references do.
PRESETS: Dict[str, Dict[str, Any]] = {
    # timm resnet50d (Bag of Tricks ResNet-D: deep stem, average-pool downsampling)
    "resnet_d": {"stem_type": "deep", "stem_width": 32, "avg_down": True, "stride_in_1x1": False},
    # timm seresnext50_32x4d
    "seresnext": {"se_ratio": 0.0625, "num_groups": 32, "width_per_group": 4, "stride_in_1x1": False},
    # ResNet-RS (Bello et al.; timm resnetrs50): ResNet-D, SE with ratio 1/4, and a strided 3x3
    # convolution in place of the stem's max pool
    "resnet_rs": {"stem_type": "deep", "stem_width": 32, "avg_down": True, "se_ratio": 0.25,
                  "stem_pool": "conv", "stride_in_1x1": False},
    # torchvision wide_resnet50_2 (WRN-50-2)
    "wide": {"width_per_group": 128, "stride_in_1x1": False},
    # Detectron2's DeepLab project stem: three 3x3 convolutions 64, 64, 128 wide
    "deeplab_stem": {"stem_type": "deep", "stem_width": 64, "stem_out_channels": 128},
    # the end of the ConvNeXt road (Liu et al. 2022, Fig. 2): ConvNeXt-T, exactly timm convnext_tiny
    "convnext": {"depth": 56, "num_blocks": (3, 3, 9, 3), "stem_type": "patchify", "stem_out_channels": 96,
                 "res2_out_channels": 96, "width_per_group": 384, "stride_in_1x1": False, "depthwise": True,
                 "depthwise_first": True, "kernel_size": 7, "activation": "gelu", "single_activation": True,
                 "single_norm": True, "norm": "LN", "downsample": "separate", "layer_scale": 1e-6},
}

#: the ConvNeXt road in the paper's order (Fig. 2): step -> the keys it adds to the previous
#: step's (ResNet-50 with the stride on the 3x3 first). "Inverted bottleneck" needs no key of its
#: own: the residual stream becomes narrower than the 3x3 (RES2_OUT_CHANNELS 96, WIDTH_PER_GROUP 384).
CONVNEXT_ROAD: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("ResNet-50", {"stride_in_1x1": False}),
    ("stage ratio 3:3:9:3", {"depth": 56, "num_blocks": (3, 3, 9, 3)}),
    ("patchify stem", {"stem_type": "patchify"}),
    ("depthwise conv", {"depthwise": True}),
    ("width 96", {"stem_out_channels": 96, "width_per_group": 96, "res2_out_channels": 384}),
    ("inverted bottleneck", {"width_per_group": 384, "res2_out_channels": 96}),
    ("depthwise conv moved up", {"depthwise_first": True}),
    ("kernel 7x7", {"kernel_size": 7}),
    ("GELU", {"activation": "gelu"}),
    ("fewer activations", {"single_activation": True}),
    ("fewer norms", {"single_norm": True}),
    ("BN -> LN", {"norm": "LN"}),
    ("separate downsampling", {"downsample": "separate"}),
    ("layer scale (ConvNeXt-T)", {"layer_scale": 1e-6}),
)


def convnext_road() -> List[Tuple[str, Dict[str, Any]]]:
    """``(step, fields)`` of every ConvNeXt road step, each with all the fields up to it."""
    steps, fields = [], {"norm": "BN"}
    for name, changes in CONVNEXT_ROAD:
        fields = {**fields, **changes}
        steps.append((name, dict(fields)))
    return steps


class ConfigError(ValueError):
    """A config value that cannot build a backbone; the message names key, value and what is allowed."""


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def _conflict(key_a: str, value_a: Any, key_b: str, value_b: Any, why: str) -> ConfigError:
    return ConfigError(f"{key_a} = {value_a!r} cannot be combined with {key_b} = {value_b!r}: {why}")


#: fields whose config values are lists (held as tuples)
_LIST_FIELDS = ("out_features", "deform_on_per_stage", "res5_multi_grid", "checkpoint_stages", "num_blocks")

#: fields of the ConvNeXt road's blocks that pre-activation blocks have no form of
_POST_ACTIVATION_ONLY = ("depthwise_first", "single_activation", "single_norm", "downsample", "activation")

#: conv layers per block: a depth is 2 (stem conv, classifier) plus this times the blocks
_LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}

#: a three-stage body (``NUM_BLOCKS`` of three: res2..res4, the CIFAR networks) may also be
#: named as wide ResNets are: WRN-d-k has d = 4 + 2 per basic block (its count includes the
#: three 1x1 projections), so WRN-40-4 is NUM_BLOCKS [6, 6, 6]
_WRN_EXTRA_LAYERS = 2


@dataclass
class ResNetArch:
    """Every architectural choice of a ResNet body, with Detectron2's defaults."""

    depth: int = 50
    out_features: Tuple[str, ...] = ("res2", "res3", "res4", "res5")
    norm: str = "FrozenBN"
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = True
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    res5_dilation: int = 1
    freeze_at: int = 2
    # variants (issue 3); every default leaves the original ResNet
    stem_type: str = "basic"
    stem_width: int = 32
    shortcut: str = "B"
    avg_down: bool = False
    preact: bool = False
    se_ratio: float = 0.0
    deform_on_per_stage: Tuple[bool, ...] = (False, False, False, False)
    deform_modulated: bool = False
    deform_num_groups: int = 1
    output_stride: int = 32
    res5_multi_grid: Tuple[int, ...] = (1, 1, 1)
    dilation_mode: str = "detectron2"
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    checkpoint_stages: Tuple[str, ...] = ()
    norm_eval: bool = False
    channels_last: bool = False
    preset: str = ""
    in_channels: int = 3
    # issue 15: any depth, timm's stems, anti-aliasing, ECA
    num_blocks: Tuple[int, ...] = ()
    stem_pool: str = "max"
    anti_alias: str = ""
    eca: bool = False
    # issue 19: the ConvNeXt road (CONVNEXT_ROAD; stage ratio is NUM_BLOCKS, the stem STEM_TYPE patchify)
    depthwise: bool = False
    depthwise_first: bool = False
    kernel_size: int = 3
    activation: str = "relu"
    single_activation: bool = False
    single_norm: bool = False
    downsample: str = "block"
    layer_scale: float = 0.0

    #: field -> the config key it is read from (messages name keys, not fields)
    KEYS = {
        "depth": "MODEL.RESNETS.DEPTH",
        "out_features": "MODEL.RESNETS.OUT_FEATURES",
        "norm": "MODEL.RESNETS.NORM",
        "num_groups": "MODEL.RESNETS.NUM_GROUPS",
        "width_per_group": "MODEL.RESNETS.WIDTH_PER_GROUP",
        "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
        "stem_out_channels": "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "res2_out_channels": "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
        "freeze_at": "MODEL.BACKBONE.FREEZE_AT",
        "stem_type": "MODEL.RESNETS.STEM_TYPE",
        "stem_width": "MODEL.RESNETS.STEM_WIDTH",
        "shortcut": "MODEL.RESNETS.SHORTCUT",
        "avg_down": "MODEL.RESNETS.AVG_DOWN",
        "preact": "MODEL.RESNETS.PREACT",
        "se_ratio": "MODEL.RESNETS.SE_RATIO",
        "deform_on_per_stage": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
        "deform_modulated": "MODEL.RESNETS.DEFORM_MODULATED",
        "deform_num_groups": "MODEL.RESNETS.DEFORM_NUM_GROUPS",
        "output_stride": "MODEL.RESNETS.OUTPUT_STRIDE",
        "res5_multi_grid": "MODEL.RESNETS.RES5_MULTI_GRID",
        "dilation_mode": "MODEL.RESNETS.DILATION_MODE",
        "zero_init_residual": "MODEL.RESNETS.ZERO_INIT_RESIDUAL",
        "drop_path_rate": "MODEL.RESNETS.DROP_PATH_RATE",
        "checkpoint_stages": "MODEL.RESNETS.CHECKPOINT_STAGES",
        "norm_eval": "MODEL.RESNETS.NORM_EVAL",
        "channels_last": "MODEL.RESNETS.CHANNELS_LAST",
        "preset": "MODEL.RESNETS.PRESET",
        "num_blocks": "MODEL.RESNETS.NUM_BLOCKS",
        "stem_pool": "MODEL.RESNETS.STEM_POOL",
        "anti_alias": "MODEL.RESNETS.ANTI_ALIAS",
        "eca": "MODEL.RESNETS.ECA",
        "depthwise": "MODEL.RESNETS.DEPTHWISE",
        "depthwise_first": "MODEL.RESNETS.DEPTHWISE_FIRST",
        "kernel_size": "MODEL.RESNETS.KERNEL_SIZE",
        "activation": "MODEL.RESNETS.ACTIVATION",
        "single_activation": "MODEL.RESNETS.SINGLE_ACTIVATION",
        "single_norm": "MODEL.RESNETS.SINGLE_NORM",
        "downsample": "MODEL.RESNETS.DOWNSAMPLE",
        "layer_scale": "MODEL.RESNETS.LAYER_SCALE",
    }

    #: fields the weights do not determine: how the body is run, trained or cut, not what
    #: tensors it holds (a weight converter leaves them to the user)
    RUN_CHOICES = ("out_features", "freeze_at", "res5_dilation", "output_stride", "res5_multi_grid",
                   "dilation_mode", "zero_init_residual", "drop_path_rate", "checkpoint_stages", "norm_eval",
                   "channels_last", "preset")

    #: weight facts a converter always prints, even at their default (the foundation's keys)
    ALWAYS_LISTED = ("depth", "num_groups", "width_per_group", "stride_in_1x1", "stem_out_channels",
                     "res2_out_channels")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_cfg(cls, cfg, in_channels: int = 3) -> "ResNetArch":
        """Read and validate the body's keys from a Detectron2 ``CfgNode``.

        ``MODEL.RESNETS.PRESET`` fills the keys it implies that are still at their default;
        a key set to any other value keeps that value (see :meth:`with_preset`).
        """
        values: Dict[str, Any] = {"in_channels": in_channels}
        for name, key in cls.KEYS.items():
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            if leaf in node:
                values[name] = node[leaf]
        for name in _LIST_FIELDS:
            if name in values and isinstance(values[name], (list, tuple)):
                values[name] = tuple(values[name])
        return cls.with_preset(values.pop("preset", ""), **values)

    @classmethod
    def with_preset(cls, preset: str, *, key_names: Optional[Mapping[str, str]] = None,
                    **fields) -> "ResNetArch":
        """An arch from ``fields``, with the fields ``preset`` implies wherever ``fields`` leaves
        them at their default. To undo part of a preset, set its keys instead of the preset.
        ``key_names`` as in :meth:`validated`."""
        if preset not in ("",) + tuple(PRESETS):
            raise _bad((key_names or cls.KEYS)["preset"], preset, f"'' (none) or one of {list(PRESETS)}")
        defaults = cls()
        for name, value in PRESETS.get(preset, {}).items():
            if fields.get(name, getattr(defaults, name)) == getattr(defaults, name):
                fields[name] = value
        return cls(preset=preset, **fields).validated(key_names)

    def replace(self, **changes) -> "ResNetArch":
        return dataclasses.replace(self, **changes).validated()

    def config_items(self) -> List[Tuple[str, Any]]:
        """``(key, value)`` for every config key, as a user would set them."""
        return [(key, list(value) if isinstance(value := getattr(self, name), tuple) else value)
                for name, key in self.KEYS.items()]

    def weight_config_items(self) -> List[Tuple[str, Any]]:
        """The keys that describe what weights for this body hold: the foundation's always,
        a variant's only when it is not at its default; no run choices, and the norm only for GN
        and LN (BN and FrozenBN weights are interchangeable)."""
        defaults = ResNetArch()
        items = []
        for name, key in self.KEYS.items():
            value = getattr(self, name)
            if name in self.RUN_CHOICES or (name == "norm" and value not in ("GN", "LN")):
                continue
            if name in self.ALWAYS_LISTED or value != getattr(defaults, name):
                items.append((key, list(value) if isinstance(value, tuple) else value))
        return items

    # ----------------------------------------------------------------- derived facts
    @property
    def block_type(self) -> str:
        """``basic`` or ``bottleneck``: the depth table's, or with ``NUM_BLOCKS`` the type whose
        layer count (2 + 2 or 3 per block) is ``DEPTH``."""
        if self.num_blocks:
            return next(t for t, depths in self._depths_of_blocks().items() if self.depth in depths)
        return DEPTHS[self.depth][0]

    def _depths_of_blocks(self) -> Dict[str, Tuple[int, ...]]:
        """Block type -> the depths that name ``NUM_BLOCKS`` with it."""
        total = sum(self.num_blocks)
        depths = {t: (2 + k * total,) for t, k in _LAYERS_PER_BLOCK.items()}
        if len(self.num_blocks) == 3:
            depths["basic"] += (2 + _WRN_EXTRA_LAYERS + 2 * total,)
        return depths

    @property
    def blocks_per_stage(self) -> Tuple[int, ...]:
        return tuple(self.num_blocks) if self.num_blocks else DEPTHS[self.depth][1]

    @property
    def num_stages(self) -> int:
        """Stages needed for ``out_features`` (unused later stages are not built)."""
        return max(FEATURE_NAMES.index(f) for f in self.out_features)

    @property
    def effective_output_stride(self) -> int:
        """``OUTPUT_STRIDE``, or 16 for Detectron2's ``RES5_DILATION: 2`` (DC5)."""
        return 16 if self.res5_dilation == 2 else self.output_stride

    @property
    def has_multi_grid(self) -> bool:
        """Whether ``RES5_MULTI_GRID`` is more than its all-ones default (of any length)."""
        return any(g != 1 for g in self.res5_multi_grid)

    def stage_out_channels(self, index: int) -> int:
        """Output channels of stage ``index`` (0 = res2)."""
        return self.res2_out_channels * 2**index

    def stage_bottleneck_channels(self, index: int) -> int:
        return self.num_groups * self.width_per_group * 2**index

    def stage_dilation(self, index: int) -> int:
        """The dilation that replaces stage ``index``'s stride (1 where the stage strides)."""
        res4, res5 = OUTPUT_STRIDES[self.effective_output_stride]
        return {2: res4, 3: res5}.get(index, 1)

    def stage_downsample(self, index: int) -> bool:
        """Whether stage ``index`` starts with a separate downsampling layer (``DOWNSAMPLE: separate``)."""
        return self.downsample == "separate" and index > 0

    def stage_stride(self, index: int) -> int:
        """Stride of the first block of stage ``index``; a dilated stage keeps the resolution."""
        return 1 if index == 0 or self.stage_dilation(index) > 1 else 2

    def block_dilations(self, index: int) -> List[Tuple[int, int]]:
        """``(first_dilation, dilation)`` of each block of stage ``index``: the dilation of the
        block's first 3x3 convolution and of the others (see ``MODEL.RESNETS.DILATION_MODE``)."""
        base = self.stage_dilation(index)
        grid = self.res5_multi_grid if index == 3 and self.has_multi_grid else (1,) * self.blocks_per_stage[index]
        dilations = [base * g for g in grid]
        firsts = list(dilations)
        if self.dilation_mode == "torchvision":
            firsts[0] = self.block_dilations(index - 1)[-1][1] if index > 0 else 1
        return list(zip(firsts, dilations))

    def block_drop_path_rates(self, index: int) -> List[float]:
        """Drop-path rate of each block of stage ``index``: rising linearly from 0 at the first
        block of res2 to ``DROP_PATH_RATE`` at the last block of res5 (timm's rule)."""
        counts = self.blocks_per_stage
        first, total = sum(counts[:index]), sum(counts)
        return [self.drop_path_rate * (first + i) / (total - 1) for i in range(counts[index])]

    # ----------------------------------------------------------------- validation
    def validated(self, key_names: Optional[Mapping[str, str]] = None) -> "ResNetArch":
        """``self`` if every field is allowed, else a :class:`ConfigError` naming the config key.

        ``key_names`` (field -> name) makes the messages name something else than the yacs keys
        of :attr:`KEYS`, e.g. the keywords of a LazyConfig call.
        """
        if key_names is not None:
            # every check reads self.KEYS: an instance attribute shadows the class's for this call
            self.KEYS = key_names
            try:
                return self.validated()
            finally:
                del self.KEYS
        k = self.KEYS
        self._check_depth()
        unknown = [f for f in self.out_features if f not in FEATURE_NAMES]
        if unknown or not self.out_features:
            raise _bad(k["out_features"], list(self.out_features),
                       f"a non-empty list of names from {list(FEATURE_NAMES)}; unknown: {unknown}")
        self._check_stage_count()
        if self.norm not in NORM_NAMES:
            raise _bad(k["norm"], self.norm, f"one of {list(NORM_NAMES)}")
        if not 0 <= self.freeze_at <= 5:
            raise _bad(k["freeze_at"], self.freeze_at,
                       "0 (train everything) to 5 (freeze the stem and res2..res5)")
        for name in ("num_groups", "width_per_group", "stem_out_channels", "res2_out_channels", "stem_width",
                     "deform_num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _bad(k[name], value, "a positive integer")
        for name in ("stride_in_1x1", "avg_down", "preact", "deform_modulated", "zero_init_residual",
                     "norm_eval", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(k[name], getattr(self, name), "True or False")
        if self.res5_dilation not in (1, 2):
            raise _bad(k["res5_dilation"], self.res5_dilation, "1 or 2 (DC5)")
        if self.block_type == "basic":
            self._check_basic_blocks()
        if self.norm == "GN":
            self._check_group_norm_divides()
        self._check_stem()
        self._check_shortcut()
        self._check_squeeze_excite()
        self._check_anti_alias()
        self._check_deform()
        self._check_dilation()
        self._check_training_aids()
        self._check_convnext_road()
        return self

    def _check_depth(self) -> None:
        k, blocks = self.KEYS, self.num_blocks
        if not blocks:
            if self.depth not in DEPTHS:
                raise _bad(k["depth"], self.depth, f"one of {sorted(DEPTHS)}, or any depth with "
                           f"{k['num_blocks']} (blocks per stage res2..res5)")
            return
        if len(blocks) not in (3, 4) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                for n in blocks):
            raise _bad(k["num_blocks"], list(blocks), "[] (from DEPTH), four positive integers (the blocks of "
                       "res2..res5) or three (res2..res4: a CIFAR body)")
        layers = self._depths_of_blocks()
        if not any(self.depth in depths for depths in layers.values()):
            wide = (f", or, with three stages, 4 + 2 per basic block (WRN-d-k: {layers['basic'][-1]})"
                    if len(blocks) == 3 else "")
            raise _conflict(k["depth"], self.depth, k["num_blocks"], list(blocks),
                            f"DEPTH counts the layers, 2 + 2 per basic block ({layers['basic'][0]}) or 2 + 3 per "
                            f"bottleneck block ({layers['bottleneck'][0]}){wide}, and so chooses the block type")

    def _check_stage_count(self) -> None:
        """A three-stage body (CIFAR) has no res5: nothing may ask for it or dilate it."""
        k, stages = self.KEYS, len(self.blocks_per_stage)
        if stages == 4:
            return
        beyond = [f for f in self.out_features if FEATURE_NAMES.index(f) > stages]
        if beyond:
            raise _conflict(k["out_features"], list(self.out_features), k["num_blocks"], list(self.num_blocks),
                            f"the body has {stages} stages, {list(STAGE_NAMES[:stages])}; no {beyond}")
        for name, default in (("output_stride", 32), ("res5_dilation", 1), ("res5_multi_grid", (1, 1, 1))):
            if getattr(self, name) != default:
                value = getattr(self, name)
                raise _conflict(k[name], list(value) if isinstance(value, tuple) else value, k["num_blocks"],
                                list(self.num_blocks), "it dilates res5, and a three-stage body has none")

    def _check_anti_alias(self) -> None:
        k = self.KEYS
        if self.stem_pool not in STEM_POOLS:
            raise _bad(k["stem_pool"], self.stem_pool,
                       "'max' (3x3 max pool) or 'conv' (ResNet-RS: a 3x3 stride-2 convolution with norm and ReLU)")
        if not isinstance(self.eca, bool):
            raise _bad(k["eca"], self.eca, "True or False")
        if self.eca and self.se_ratio > 0:
            raise _conflict(k["eca"], True, k["se_ratio"], self.se_ratio,
                            "a block has one channel attention: ECA or squeeze-and-excitation")
        if self.anti_alias not in ANTI_ALIAS_TYPES:
            raise _bad(k["anti_alias"], self.anti_alias,
                       "'' (none), 'avg' (2x2 average pool) or 'blur' (3x3 binomial blur pool), applied "
                       "after the strided 3x3 convolution, which then keeps stride 1 (timm's aa_layer)")
        if not self.anti_alias:
            return
        if self.stride_in_1x1 and self.block_type == "bottleneck":
            raise _conflict(k["anti_alias"], self.anti_alias, k["stride_in_1x1"], True,
                            "anti-aliasing takes the stride of the 3x3 convolution; set STRIDE_IN_1X1 False")
        for key, value, why in ((k["stem_pool"], self.stem_pool, "conv"), (k["preact"], self.preact, True),
                                (k["deform_on_per_stage"], any(self.deform_on_per_stage), True)):
            if value == why:
                raise _conflict(k["anti_alias"], self.anti_alias, key, list(self.deform_on_per_stage)
                                if key == k["deform_on_per_stage"] else value,
                                "this package has no anti-aliased form of it (nor has timm)")

    def _check_basic_blocks(self) -> None:
        k, why = self.KEYS, f"depth {self.depth} uses basic blocks (ResNet-18/34)"
        if self.num_groups != 1:
            raise _bad(k["num_groups"], self.num_groups, f"1: {why}, which have no grouped convolution")
        if self.width_per_group != 64:
            raise _conflict(k["width_per_group"], self.width_per_group, k["depth"], self.depth,
                            f"{why}, whose width is RES2_OUT_CHANNELS; set it to 64")
        if self.res2_out_channels != 64 and self.stem_type != "cifar":  # CIFAR bodies are 16 (or 16k) wide
            raise _bad(k["res2_out_channels"], self.res2_out_channels, f"64: {why}, whose res2 has 64 channels "
                       "(any width with STEM_TYPE 'cifar')")

    def _check_group_norm_divides(self) -> None:
        widths = {self.KEYS["stem_out_channels"]: self.stem_out_channels,
                  self.KEYS["res2_out_channels"]: self.res2_out_channels}
        if self.block_type == "bottleneck":
            widths[f"{self.KEYS['num_groups']} x {self.KEYS['width_per_group']}"] = (
                self.num_groups * self.width_per_group)
        if self.stem_type in ("deep", "tiered"):
            widths[self.KEYS["stem_width"]] = self.stem_width
        if self.stem_type == "tiered":
            widths[f"3/4 of {self.KEYS['stem_width']} (the tiered stem's first width)"] = self.stem_width // 4 * 3
        for key, channels in widths.items():
            if channels % GN_GROUPS:
                raise ConfigError(
                    f"{key} = {channels} is not allowed with {self.KEYS['norm']} = 'GN': "
                    f"GroupNorm's {GN_GROUPS} groups must divide the channel count"
                )

    def _check_stem(self) -> None:
        k = self.KEYS
        if self.stem_type not in STEM_TYPES:
            hint = (" (Detectron2's DeepLab 'deeplab' stem is STEM_TYPE 'deep' with STEM_WIDTH = "
                    "STEM_OUT_CHANNELS / 2, or PRESET 'deeplab_stem')" if self.stem_type == "deeplab" else "")
            raise _bad(k["stem_type"], self.stem_type, f"one of {list(STEM_TYPES)}{hint}")
        if self.stem_type in ("basic", "patchify", "cifar") and self.stem_width != ResNetArch.stem_width:
            raise _conflict(k["stem_width"], self.stem_width, k["stem_type"], self.stem_type,
                            f"STEM_WIDTH is the inner width of the deep stem; the {self.stem_type} stem has one "
                            "convolution, STEM_OUT_CHANNELS wide")
        if self.stem_type in ("patchify", "cifar"):
            reaches = ("its 4x4 stride-4 convolution reaches stride 4 alone" if self.stem_type == "patchify"
                       else "the CIFAR stem (one 3x3 convolution at stride 1) has no pool to replace")
            for name, default in (("stem_pool", "max"), ("anti_alias", "")):
                if getattr(self, name) != default:
                    raise _conflict(k[name], getattr(self, name), k["stem_type"], self.stem_type,
                                    f"the {self.stem_type} stem has no pool: {reaches}")

    def _check_shortcut(self) -> None:
        k = self.KEYS
        if self.shortcut not in SHORTCUT_TYPES:
            raise _bad(k["shortcut"], self.shortcut,
                       "'A' (identity, zero-padded channels), 'B' (projection where the shape changes), "
                       "'C' (projection in every block) or 'none' (no shortcut: the paper's plain network)")
        if self.shortcut == "none":
            self._check_plain()
        if self.shortcut == "A" and self.avg_down:
            raise _conflict(k["avg_down"], self.avg_down, k["shortcut"], self.shortcut,
                            "AVG_DOWN changes the projection shortcut, and option A has none")
        if self.shortcut == "A" and self.stem_out_channels > self.res2_out_channels:
            raise ConfigError(
                f"{k['shortcut']} = 'A' cannot be combined with {k['stem_out_channels']} = "
                f"{self.stem_out_channels} and {k['res2_out_channels']} = {self.res2_out_channels}: "
                "option A pads channels with zeros, so no shortcut may reduce them")

    def _check_plain(self) -> None:
        k = self.KEYS
        # each of these acts through the shortcut, and without one it silences the network
        for name, why in (("avg_down", "AVG_DOWN changes the projection shortcut, and a plain network has none"),
                          ("zero_init_residual", "a zero last norm makes a block the identity through its "
                           "shortcut; without one the network would output zeros"),
                          ("drop_path_rate", "dropping a block's branch leaves its shortcut; without one the "
                           "sample's features would be zeros")):
            if getattr(self, name):
                raise _conflict(k[name], getattr(self, name), k["shortcut"], self.shortcut, why)

    def _check_squeeze_excite(self) -> None:
        ratio = self.se_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise _bad(self.KEYS["se_ratio"], ratio,
                       "0 (no squeeze-and-excitation) or the hidden fraction in (0, 1], e.g. 0.0625")

    def _check_deform(self) -> None:
        k, stages = self.KEYS, self.deform_on_per_stage
        if len(stages) != 4 or not all(isinstance(v, bool) for v in stages):
            raise _bad(k["deform_on_per_stage"], list(stages), "four True/False values, for res2..res5")
        if not any(stages):
            return
        if self.block_type == "basic":
            raise _conflict(k["deform_on_per_stage"], list(stages), k["depth"], self.depth,
                            "deformable convolutions replace a bottleneck's 3x3 and basic blocks have none "
                            "(use depth 50 or more)")
        for index, on in enumerate(stages):
            width = self.stage_bottleneck_channels(index)
            if on and width % self.deform_num_groups:
                raise ConfigError(
                    f"{k['deform_num_groups']} = {self.deform_num_groups} cannot be combined with "
                    f"{k['num_groups']} x {k['width_per_group']} = {self.num_groups * self.width_per_group}: "
                    f"the offset groups must divide the {width} channels of {STAGE_NAMES[index]}'s 3x3")

    def _check_dilation(self) -> None:
        k = self.KEYS
        if self.output_stride not in OUTPUT_STRIDES:
            raise _bad(k["output_stride"], self.output_stride,
                       "32, 16 (res5 dilated by 2) or 8 (res4 by 2, res5 by 4)")
        if self.res5_dilation == 2 and self.output_stride == 8:
            raise _conflict(k["res5_dilation"], self.res5_dilation, k["output_stride"], self.output_stride,
                            "RES5_DILATION 2 means output stride 16, while output stride 8 dilates res5 by 4; "
                            "set only OUTPUT_STRIDE")
        if self.dilation_mode not in DILATION_MODES:
            raise _bad(k["dilation_mode"], self.dilation_mode,
                       "'detectron2' (a dilated stage's first block takes its dilation) or 'torchvision' "
                       "(it keeps the previous one)")
        grid, blocks = self.res5_multi_grid, self.blocks_per_stage[-1]
        valid = all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
        if not valid or not grid or (self.has_multi_grid and len(grid) != blocks):
            raise _bad(k["res5_multi_grid"], list(grid),
                       f"{blocks} positive integers, one per res5 block of depth {self.depth}, "
                       "multiplying its dilation")
        if self.dilation_mode == "torchvision" and self.has_multi_grid:
            raise _conflict(k["res5_multi_grid"], list(grid), k["dilation_mode"], self.dilation_mode,
                            "in torchvision mode res5's first block keeps res4's dilation, which would "
                            "override the grid's first rate; use DILATION_MODE 'detectron2'")

    def _check_training_aids(self) -> None:
        k = self.KEYS
        if self.zero_init_residual and self.norm == "FrozenBN":
            raise _conflict(k["zero_init_residual"], True, k["norm"], self.norm,
                            "FrozenBN's scale never trains, so the residual branches would stay switched off")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise _bad(k["drop_path_rate"], rate, "a probability in [0, 1)")
        unknown = [s for s in self.checkpoint_stages if s not in FEATURE_NAMES]
        if unknown:
            raise _bad(k["checkpoint_stages"], list(self.checkpoint_stages),
                       f"names from {list(FEATURE_NAMES)}; unknown: {unknown}")
        if self.norm_eval and self.norm in ("GN", "LN", ""):
            raise _conflict(k["norm_eval"], True, k["norm"], self.norm,
                            "NORM_EVAL freezes BatchNorm statistics and this norm keeps none")


    def _check_convnext_road(self) -> None:
        k = self.KEYS
        for name in ("depthwise", "depthwise_first", "single_activation", "single_norm"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(k[name], getattr(self, name), "True or False")
        size = self.kernel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
            raise _bad(k["kernel_size"], size, "an odd positive integer, the size of the blocks' spatial convolutions")
        if self.activation not in ACTIVATIONS:
            raise _bad(k["activation"], self.activation, f"one of {list(ACTIVATIONS)}")
        if self.downsample not in DOWNSAMPLE_TYPES:
            raise _bad(k["downsample"], self.downsample, "'block' (the first block of a stage strides) or "
                       "'separate' (ConvNeXt: a norm and a 2x2 stride-2 convolution before the stage)")
        scale = self.layer_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise _bad(k["layer_scale"], scale, "0 (none) or the positive initial value of the per-channel "
                       "scale of each branch (ConvNeXt: 1e-6)")
        if self.depthwise and self.block_type == "basic":
            raise _conflict(k["depthwise"], True, k["depth"], self.depth,
                            "a depthwise convolution is a bottleneck's 3x3 and basic blocks have none")
        if self.depthwise and self.num_groups != 1:
            raise _conflict(k["depthwise"], True, k["num_groups"], self.num_groups,
                            "a depthwise convolution has one group per channel; leave NUM_GROUPS at 1 and set "
                            "the width with WIDTH_PER_GROUP")
        if self.depthwise_first and not self.depthwise:
            raise _conflict(k["depthwise_first"], True, k["depthwise"], False,
                            "it moves the depthwise convolution to the block's input")
        if self.depthwise_first and self.stride_in_1x1:
            raise _conflict(k["depthwise_first"], True, k["stride_in_1x1"], True,
                            "a block whose depthwise convolution comes first strides there; set STRIDE_IN_1X1 False")
        deformable = any(self.deform_on_per_stage)
        for name, value, on in (("depthwise", self.depthwise, self.depthwise), ("kernel_size", size, size != 3)):
            if on and deformable:
                raise _conflict(k[name], value, k["deform_on_per_stage"], list(self.deform_on_per_stage),
                                "deformable convolutions here are dense 3x3 ones")
        if self.depthwise_first and self.anti_alias:
            raise _conflict(k["anti_alias"], self.anti_alias, k["depthwise_first"], True,
                            "anti-aliasing follows a bottleneck's middle 3x3, which this block does not have")
        if self.preact:
            for name in _POST_ACTIVATION_ONLY:
                if getattr(self, name) != getattr(ResNetArch, name):
                    raise _conflict(k[name], getattr(self, name), k["preact"], True,
                                    "this package has no pre-activation form of it")
        if self.downsample == "separate":
            self._check_separate_downsampling()

    def _check_separate_downsampling(self) -> None:
        k, why = self.KEYS, "with separate downsampling no block changes the shape, so no block has a projection"
        if self.avg_down:
            raise _conflict(k["avg_down"], True, k["downsample"], "separate", why)
        if self.shortcut != "B":
            raise _conflict(k["shortcut"], self.shortcut, k["downsample"], "separate", why)
        if self.anti_alias:
            raise _conflict(k["anti_alias"], self.anti_alias, k["downsample"], "separate",
                            "no block strides, and the downsampling convolution has no anti-aliased form")
        if self.effective_output_stride != 32:
            raise _conflict(k["output_stride"], self.effective_output_stride, k["downsample"], "separate",
                            "dilated stages are not supported with separate downsampling layers")
        if self.stem_out_channels != self.res2_out_channels:
            raise ConfigError(
                f"{k['stem_out_channels']} = {self.stem_out_channels} cannot be combined with "
                f"{k['res2_out_channels']} = {self.res2_out_channels} and {k['downsample']} = 'separate': {why}, "
                "and res2 has no downsampling layer to change the width (ConvNeXt: both 96)")


def check_in_features(key: str, requested: Sequence[str], available: Sequence[str]) -> None:
    """Fail with the key's name when a neck asks for features the body does not output."""
    missing = [f for f in requested if f not in available]
    if missing or not requested:
        raise ConfigError(
            f"{key} = {list(requested)} is not allowed: the backbone outputs {list(available)} "
            f"(MODEL.RESNETS.OUT_FEATURES); missing: {missing}"
        )
