"""What a ResNet body is made of, read from a Detectron2 config and checked before building.

``ResNetArch`` is the one place that knows the depth table, the config key of every
architectural choice and which combinations are allowed. The builders, the weight converter
(which infers an ``ResNetArch`` from a state dict) and the analysis tool all go through it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from .layers import GN_GROUPS, NORM_NAMES

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


class ConfigError(ValueError):
    """A config value that cannot build a backbone; the message names key, value and what is allowed."""


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


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
    in_channels: int = 3

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
    }

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_cfg(cls, cfg, in_channels: int = 3) -> "ResNetArch":
        """Read and validate the body's keys from a Detectron2 ``CfgNode``."""
        values: Dict[str, Any] = {"in_channels": in_channels}
        for name, key in cls.KEYS.items():
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            if leaf in node:
                values[name] = node[leaf]
        values["out_features"] = tuple(values.get("out_features", cls.out_features))
        return cls(**values).validated()

    def replace(self, **changes) -> "ResNetArch":
        return dataclasses.replace(self, **changes).validated()

    def config_items(self) -> List[Tuple[str, Any]]:
        """``(key, value)`` for every config key, as a user would set them."""
        return [(key, list(getattr(self, name)) if name == "out_features" else getattr(self, name))
                for name, key in self.KEYS.items()]

    # ----------------------------------------------------------------- derived facts
    @property
    def block_type(self) -> str:
        return DEPTHS[self.depth][0]

    @property
    def blocks_per_stage(self) -> Tuple[int, ...]:
        return DEPTHS[self.depth][1]

    @property
    def num_stages(self) -> int:
        """Stages needed for ``out_features`` (unused later stages are not built)."""
        return max(FEATURE_NAMES.index(f) for f in self.out_features)

    def stage_out_channels(self, index: int) -> int:
        """Output channels of stage ``index`` (0 = res2)."""
        return self.res2_out_channels * 2**index

    def stage_bottleneck_channels(self, index: int) -> int:
        return self.num_groups * self.width_per_group * 2**index

    def stage_dilation(self, index: int) -> int:
        return self.res5_dilation if index == 3 else 1

    def stage_stride(self, index: int) -> int:
        """Stride of the first block of stage ``index``; a dilated stage keeps the resolution."""
        return 1 if index == 0 or self.stage_dilation(index) > 1 else 2

    # ----------------------------------------------------------------- validation
    def validated(self) -> "ResNetArch":
        k = self.KEYS
        if self.depth not in DEPTHS:
            raise _bad(k["depth"], self.depth, f"one of {sorted(DEPTHS)}")
        unknown = [f for f in self.out_features if f not in FEATURE_NAMES]
        if unknown or not self.out_features:
            raise _bad(k["out_features"], list(self.out_features),
                       f"a non-empty list of names from {list(FEATURE_NAMES)}; unknown: {unknown}")
        if self.norm not in NORM_NAMES:
            raise _bad(k["norm"], self.norm, f"one of {list(NORM_NAMES)}")
        if not 0 <= self.freeze_at <= 5:
            raise _bad(k["freeze_at"], self.freeze_at,
                       "0 (train everything) to 5 (freeze the stem and res2..res5)")
        for name in ("num_groups", "width_per_group", "stem_out_channels", "res2_out_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise _bad(k[name], value, "a positive integer")
        if self.res5_dilation not in (1, 2):
            raise _bad(k["res5_dilation"], self.res5_dilation, "1 or 2 (DC5)")
        if self.block_type == "basic":
            if self.num_groups != 1:
                raise _bad(k["num_groups"], self.num_groups,
                           f"1: depth {self.depth} uses basic blocks, which have no grouped convolution")
            if self.res2_out_channels != 64:
                raise _bad(k["res2_out_channels"], self.res2_out_channels,
                           f"64: depth {self.depth} uses basic blocks (ResNet-18/34), whose res2 has 64 channels")
        if self.norm == "GN":
            self._check_group_norm_divides()
        return self

    def _check_group_norm_divides(self) -> None:
        widths = {self.KEYS["stem_out_channels"]: self.stem_out_channels,
                  self.KEYS["res2_out_channels"]: self.res2_out_channels}
        if self.block_type == "bottleneck":
            widths[f"{self.KEYS['num_groups']} x {self.KEYS['width_per_group']}"] = (
                self.num_groups * self.width_per_group)
        for key, channels in widths.items():
            if channels % GN_GROUPS:
                raise ConfigError(
                    f"{key} = {channels} is not allowed with MODEL.RESNETS.NORM = 'GN': "
                    f"GroupNorm's {GN_GROUPS} groups must divide the channel count"
                )


def check_in_features(key: str, requested: Sequence[str], available: Sequence[str]) -> None:
    """Fail with the key's name when a neck asks for features the body does not output."""
    missing = [f for f in requested if f not in available]
    if missing or not requested:
        raise ConfigError(
            f"{key} = {list(requested)} is not allowed: the backbone outputs {list(available)} "
            f"(MODEL.RESNETS.OUT_FEATURES); missing: {missing}"
        )
