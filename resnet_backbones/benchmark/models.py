"""The models the benchmark compares: ours and Detectron2's built-in ResNet, same config and
weights, and our fast-path variants.

Detectron2's ``build_resnet_backbone`` / ``build_resnet_fpn_backbone`` are built from the same
config as ours (only ``MODEL.BACKBONE.NAME`` differs), given random weights with random BN
statistics (default statistics would make every norm an identity), and their state dict is
loaded into ours, strictly: the parameter names are the same. The outputs are then compared
before anything is timed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import compat  # noqa: F401  (before detectron2)
from ..config import NEW_KEYS, get_default_config, load_config

__all__ = [
    "BACKBONE_KINDS",
    "Variant",
    "build_backbone_pair",
    "build_mask_rcnn_pair",
    "backbone_cfg",
    "config_key_available",
    "max_abs_diff",
    "randomize_norm_statistics",
    "synthetic_detection_batch",
]

#: kind -> (our builder, Detectron2's builder)
BACKBONE_KINDS = {
    "plain": ("build_resnet_family_backbone", "build_resnet_backbone"),
    "fpn": ("build_resnet_family_fpn_backbone", "build_resnet_fpn_backbone"),
}
ALL_STAGES = ["res2", "res3", "res4", "res5"]
_REPO = Path(__file__).resolve().parents[2]
MASK_RCNN_CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def config_key_available(key: str) -> bool:
    """Whether this package defines config key ``key`` (e.g. ``MODEL.RESNETS.CHANNELS_LAST``)."""
    return key in NEW_KEYS


def backbone_cfg(depth: int, kind: str, device: torch.device, **resnets: Any):
    """Detectron2's defaults (FrozenBN, FREEZE_AT 2, stride in the 1x1) for an R-``depth``
    body with all four stages out, as a plain body or under an FPN."""
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"backbone kind must be one of {sorted(BACKBONE_KINDS)}, got {kind!r}")
    cfg = get_default_config()
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.BACKBONE.NAME = BACKBONE_KINDS[kind][0]
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    cfg.MODEL.FPN.IN_FEATURES = list(ALL_STAGES)
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key.upper()] = value
    return cfg


@torch.no_grad()
def randomize_norm_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random but tame BN/FrozenBN statistics and affine parameters (activations stay of order
    one through 100+ layers), so that no norm is an identity in the comparisons."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if getattr(m, "running_var", None) is not None and getattr(m, "weight", None) is not None:
            n = m.running_var.numel()
            values = {
                "running_mean": torch.randn(n, generator=generator) * 0.1,
                "running_var": torch.rand(n, generator=generator) * 1.5 + 0.5,
                "weight": torch.rand(n, generator=generator) * 0.3 + 0.2,
                "bias": torch.randn(n, generator=generator) * 0.1,
            }
            for name, value in values.items():
                getattr(m, name).copy_(value.to(getattr(m, name).device))
    return module


def _build_backbone(cfg, name: str) -> nn.Module:
    from detectron2.modeling import build_backbone

    cfg = cfg.clone()
    cfg.MODEL.BACKBONE.NAME = name
    return build_backbone(cfg)


def _load_strict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    incompatible = model.load_state_dict(state, strict=True)
    if incompatible.missing_keys or incompatible.unexpected_keys:  # strict raises; belt and braces
        raise RuntimeError(f"state dicts differ: {incompatible}")


def build_backbone_pair(cfg, kind: str, seed: int = 0) -> Tuple[nn.Module, nn.Module, Dict[str, torch.Tensor]]:
    """(ours, Detectron2's, the shared state dict), in eval mode on ``cfg.MODEL.DEVICE``."""
    ours_name, theirs_name = BACKBONE_KINDS[kind]
    torch.manual_seed(seed)
    theirs = randomize_norm_statistics(_build_backbone(cfg, theirs_name), seed)
    state = theirs.state_dict()
    ours = _build_backbone(cfg, ours_name)
    _load_strict(ours, state)
    device = torch.device(cfg.MODEL.DEVICE)
    return ours.to(device).eval(), theirs.to(device).eval(), state


def build_our_backbone(cfg, kind: str, state: Dict[str, torch.Tensor]) -> nn.Module:
    """Our backbone from ``cfg`` (which may set fast-path keys) with the shared weights."""
    model = _build_backbone(cfg, BACKBONE_KINDS[kind][0])
    _load_strict(model, state)
    return model.to(torch.device(cfg.MODEL.DEVICE)).eval()


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs (dicts/lists of tensors, or tensors)."""
    if isinstance(a, dict):
        if a.keys() != b.keys():
            raise ValueError(f"outputs have different keys: {sorted(a)} and {sorted(b)}")
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return float((a.float() - b.float()).abs().max())


@dataclass
class Variant:
    """One timed configuration: a model, how its input is prepared, and its autocast."""

    name: str
    model: nn.Module
    channels_last_input: bool = False
    amp_dtype: Optional[torch.dtype] = None
    switches: Dict[str, Any] = field(default_factory=dict)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last_input else x

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def runner(self, x: torch.Tensor) -> Callable[[], Any]:
        x = self.prepare(x)
        model = self.model

        def run():
            with torch.no_grad(), self.autocast():
                return model(x)

        return run


# ---- Mask R-CNN ---------------------------------------------------------------------------


def mask_rcnn_cfg(depth: int, device: torch.device, overrides: Optional[List[str]] = None):
    """Our Mask R-CNN R-``depth``-FPN config (the repository's model-zoo file), no weights."""
    path = _REPO / MASK_RCNN_CONFIG
    if not path.is_file():
        raise ValueError(f"{path}: not found; the training benchmark runs from a source checkout")
    cfg = load_config(str(path), list(overrides or []))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return cfg


def build_mask_rcnn_pair(cfg, seed: int = 0) -> Tuple[nn.Module, nn.Module, Dict[str, torch.Tensor]]:
    """(ours, the same model with Detectron2's ``build_resnet_fpn_backbone``, state dict), in
    training mode; the weights are Detectron2's model's, random with random BN statistics."""
    from detectron2.modeling import build_model

    theirs_cfg = cfg.clone()
    theirs_cfg.MODEL.BACKBONE.NAME = BACKBONE_KINDS["fpn"][1]
    torch.manual_seed(seed)
    theirs = randomize_norm_statistics(build_model(theirs_cfg), seed)
    state = theirs.state_dict()
    ours = build_model(cfg)
    _load_strict(ours, state)
    return ours.train(), theirs.train(), state


def synthetic_detection_batch(
    batch_size: int, height: int, width: int, *, num_classes: int = 80, seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> List[Dict[str, Any]]:
    """A Detectron2 training batch: random images with 3-6 objects each (boxes, classes and
    octagon polygon masks)."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        count = int(torch.randint(3, 7, (1,), generator=generator))
        wh = torch.rand(count, 2, generator=generator) * torch.tensor([0.5 * width, 0.5 * height]) + 16
        xy = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        polygons = [[_octagon(box.tolist())] for box in boxes]
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(boxes.to(device))
        instances.gt_classes = torch.randint(0, num_classes, (count,), generator=generator).to(device)
        instances.gt_masks = PolygonMasks(polygons)
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        batch.append({"image": image.to(device), "instances": instances, "height": height, "width": width})
    return batch


def _octagon(box: List[float]) -> List[float]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = 0.25 * w, 0.25 * h
    xs = [x0 + cx, x1 - cx, x1, x1, x1 - cx, x0 + cx, x0, x0]
    ys = [y0, y0, y0 + cy, y1 - cy, y1, y1, y1 - cy, y0 + cy]
    return [c for point in zip(xs, ys) for c in point]
