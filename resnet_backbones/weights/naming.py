"""Which family a state dict comes from, and how its names map onto Detectron2's.

Detectron2's names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ``res2.0.shortcut``)
are this package's names too; every other family is translated here and nowhere else.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

SOURCES = ("torchvision", "timm", "detectron2", "caffe2")

_NORM_SUFFIXES = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def detect_source(keys: Iterable[str]) -> Optional[str]:
    """The family of a state dict from its key names, or None when nothing fits."""
    keys = list(keys)
    if any(re.match(r"stages\.[0-3]\.blocks\.\d+\.", k) for k in keys):
        return "timm"  # timm's ResNetV2 (pre-activation)
    if any(re.match(r"layer[1-4]\.\d+\.", k) for k in keys):
        timm_only = ("conv1.0.weight" in keys or "maxpool.0.weight" in keys
                     or any(re.search(r"\.(se|downsample\.2)\.", k) or k.endswith("downsample.2.weight")
                            for k in keys))
        return "timm" if timm_only else "torchvision"
    if any(re.search(r"(^|\.)(stem\.conv1|res[2-5]\.\d+\.conv1)\.", k) for k in keys):
        return "detectron2"
    if any(re.match(r"res[2-5]_\d+_branch2a_w$", k) or k == "conv1_w" for k in keys):
        return "caffe2"
    return None


def _torchvision_rules(deep_stem: bool, avg_down: bool) -> List[Tuple[str, str]]:
    stem_norm = "stem.conv3.norm" if deep_stem else "stem.conv1.norm"
    # the projection shortcut is (conv, bn) in torchvision, (avgpool, conv, bn) with timm's avg_down
    shortcut_conv, shortcut_norm = (1, 2) if avg_down else (0, 1)
    return [
        # deep stem (timm): conv1 is a Sequential of conv, bn, act, conv, bn, act, conv
        (r"^conv1\.0\.weight$", "stem.conv1.weight"),
        (rf"^conv1\.1\.{_NORM_SUFFIXES}$", r"stem.conv1.norm.\1"),
        (r"^conv1\.3\.weight$", "stem.conv2.weight"),
        (rf"^conv1\.4\.{_NORM_SUFFIXES}$", r"stem.conv2.norm.\1"),
        (r"^conv1\.6\.weight$", "stem.conv3.weight"),
        (r"^conv1\.weight$", "stem.conv1.weight"),
        (rf"^bn1\.{_NORM_SUFFIXES}$", stem_norm + r".\1"),
        # ResNet-RS (timm): the stem's max pool replaced by a strided conv and norm, still named maxpool
        (r"^maxpool\.0\.weight$", "stem.pool.weight"),
        (rf"^maxpool\.1\.{_NORM_SUFFIXES}$", r"stem.pool.norm.\1"),
        (r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$", r"res<\1>.\2.conv\3.weight"),
        (rf"^layer([1-4])\.(\d+)\.bn(\d)\.{_NORM_SUFFIXES}$", r"res<\1>.\2.conv\3.norm.\4"),
        (rf"^layer([1-4])\.(\d+)\.downsample\.{shortcut_conv}\.weight$", r"res<\1>.\2.shortcut.weight"),
        (rf"^layer([1-4])\.(\d+)\.downsample\.{shortcut_norm}\.{_NORM_SUFFIXES}$", r"res<\1>.\2.shortcut.norm.\3"),
        # squeeze-and-excitation (timm): fc1/fc2 are 1x1 convolutions with bias
        (r"^layer([1-4])\.(\d+)\.se\.fc([12])\.(weight|bias)$", r"res<\1>.\2.se.fc\3.\4"),
        # ECA (timm's EcaModule, also held as the block's "se"): one Conv1d
        (r"^layer([1-4])\.(\d+)\.se\.conv\.weight$", r"res<\1>.\2.eca.conv.weight"),
    ]


def _resnetv2_rules() -> List[Tuple[str, str]]:
    # timm's ResNetV2: the norm *before* convK is normK, which is our convK.norm (ConvNorm with
    # norm_first); the projection has no norm; the network's final norm closes res5.
    return [
        (r"^stem\.conv\.weight$", "stem.conv1.weight"),
        (r"^stem\.conv([123])\.weight$", r"stem.conv\1.weight"),
        (rf"^stem\.norm([12])\.{_NORM_SUFFIXES}$", r"stem.conv\1.norm.\2"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.conv(\d)\.weight$", r"stage<\1>.\2.conv\3.weight"),
        (rf"^stages\.([0-3])\.blocks\.(\d+)\.norm(\d)\.{_NORM_SUFFIXES}$", r"stage<\1>.\2.conv\3.norm.\4"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.downsample\.conv\.weight$", r"stage<\1>.\2.shortcut.weight"),
        (rf"^norm\.{_NORM_SUFFIXES}$", r"res5.norm.\1"),
    ]


def _convnext_rules() -> List[Tuple[str, str]]:
    # timm's ConvNeXt: the block's depthwise conv_dw and its norm are our conv1, the MLP's fc1/fc2
    # (Linear, or 1x1 convolutions with conv_mlp) conv2/conv3, gamma the layer scale; a stage's
    # downsample (norm, 2x2 conv) is our separate downsampling layer
    return [
        (r"^stem\.0\.(weight|bias)$", r"stem.conv1.\1"),
        (r"^stem\.1\.(weight|bias)$", r"stem.conv1.norm.\1"),
        (r"^stages\.([0-3])\.downsample\.0\.(weight|bias)$", r"stage<\1>.downsample.norm.\2"),
        (r"^stages\.([0-3])\.downsample\.1\.(weight|bias)$", r"stage<\1>.downsample.\2"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.conv_dw\.(weight|bias)$", r"stage<\1>.\2.conv1.\3"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.norm\.(weight|bias)$", r"stage<\1>.\2.conv1.norm.\3"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"stage<\1>.\2.conv2.\3"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"stage<\1>.\2.conv3.\3"),
        (r"^stages\.([0-3])\.blocks\.(\d+)\.gamma$", r"stage<\1>.\2.layer_scale"),
    ]


def _is_convnext(keys: Iterable[str]) -> bool:
    return any(re.match(r"stages\.[0-3]\.blocks\.\d+\.conv_dw\.", k) for k in keys)


def _is_resnetv2(keys: Iterable[str]) -> bool:
    return any(k.startswith("stages.") for k in keys)


def _rename(key: str, rules: List[Tuple[str, str]]) -> Optional[str]:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            new = re.sub(pattern, replacement, key)
            # torchvision's layer1..layer4 and timm's stages.0..3 are Detectron2's res2..res5
            new = re.sub(r"res<(\d)>", lambda m: f"res{int(m.group(1)) + 1}", new)
            return re.sub(r"stage<(\d)>", lambda m: f"res{int(m.group(1)) + 2}", new)
    return None


def architecture_hints(keys: Iterable[str], source: str) -> Tuple[Dict[str, bool], List[str]]:
    """Architecture facts that only a family's naming shows, as ``ResNetArch`` fields, and notes.

    Average-pool downsampling (ResNet-D) has no parameters, so once renamed the weights do not
    show it; timm's ResNet names its projection ``downsample.1`` instead of ``downsample.0``
    then. Raises ``ValueError`` for timm models whose computation this package does not have.
    """
    keys = list(keys)
    if source != "timm":
        return {}, []
    for pattern, what in _UNSUPPORTED_TIMM:
        if any(re.search(pattern, k) for k in keys):
            raise ValueError(f"{what} is not supported")
    if _is_convnext(keys):
        # every timm ConvNeXt has GELU between the two 1x1 layers and no other activation
        return {"activation": "gelu", "single_activation": True}, [
            "timm ConvNeXt: GELU, one activation per block (activations leave no trace in the weights)"]
    if not _is_resnetv2(keys):
        return {"avg_down": any(".downsample.2." in k for k in keys)}, []
    has_running_stats = any(k.endswith(".running_var") for k in keys)
    if "stem.conv.weight" in keys and not has_running_stats:
        raise ValueError("timm ResNetV2 with a 7x7 stem and GroupNorm is a BiT model, whose weight-"
                         "standardised convolutions and 'fixed' stem padding this package does not have")
    if "stem.conv1.weight" in keys:
        # the two projection layouts have the same names in ResNetV2
        return {"avg_down": True}, ["timm ResNetV2 with a deep stem: average-pool downsampling assumed "
                                    "(every such timm model uses it: resnetv2_*d)"]
    return {"avg_down": False}, []


#: timm layouts this package has no computation for: key pattern -> what it is
_UNSUPPORTED_TIMM = (
    (r"\.norm\d\.v$", "timm's EvoNorm (resnetv2_50d_evos: norm layers with a 'v' parameter)"),
    (r"\.norm\d\.tau$", "timm's FilterResponseNorm (resnetv2_50d_frn: norm layers with a 'tau' parameter)"),
    (r"\.mlp\.grn\.", "timm's ConvNeXt V2 (Global Response Norm in the MLP: mlp.grn)"),
)

#: classifier heads; timm ConvNeXt's norm_pre is the head's norm before pooling (head_norm_first)
CLASSIFIER_PREFIXES = ("fc.", "linear.", "head.", "classifier.", "norm_pre.")


def rename_state_dict(state_dict: Dict, source: str) -> Tuple[Dict, List[str], List[str]]:
    """Translate ``state_dict`` to Detectron2 names.

    Returns ``(renamed, dropped, unplaced)``: ``dropped`` are keys left out on purpose
    (classifier head, BN's ``num_batches_tracked`` counters, Caffe2 momentum blobs),
    ``unplaced`` are keys no rule knows, which callers treat as an error.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {SOURCES}")
    renamed, dropped, unplaced = {}, [], []
    if source == "caffe2":
        return _rename_caffe2(state_dict)
    convnext = _is_convnext(state_dict)
    if convnext:
        rules = _convnext_rules()
    elif _is_resnetv2(state_dict):
        rules = _resnetv2_rules()
    else:
        rules = _torchvision_rules(deep_stem="conv1.0.weight" in state_dict,
                                   avg_down=any(".downsample.2." in k for k in state_dict))
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or key.startswith(CLASSIFIER_PREFIXES):
            dropped.append(key)
            continue
        if source == "detectron2":
            renamed[key] = value
            continue
        new = _rename(key, rules)
        if new is None:
            unplaced.append(key)
            continue
        if convnext and len(value.shape) == 2:  # a Linear MLP layer is a 1x1 convolution here
            value = value.reshape(*value.shape, 1, 1)
        renamed[new] = value
    return renamed, dropped, unplaced


def _rename_caffe2(state_dict: Dict) -> Tuple[Dict, List[str], List[str]]:
    # Detectron2 owns the Caffe2 naming scheme; use its translation rather than a copy of it.
    from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

    dropped = [k for k in state_dict if k.endswith("_momentum") or k.startswith(("pred_", "fc1000"))]
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    converted, original_names = convert_c2_detectron_names(kept)
    renamed, unplaced = {}, []
    for new, value in converted.items():
        if re.match(r"^(stem\.|res[2-5]\.)", new):
            renamed[new] = value
        else:
            unplaced.append(original_names[new])
    return renamed, dropped, sorted(unplaced)


BACKBONE_PREFIXES = ("backbone.bottom_up.", "backbone.", "roi_heads.")


def body_key(key: str) -> Optional[str]:
    """``key`` relative to the ResNet body (Detectron2's detector prefixes removed), or None."""
    for prefix in ("",) + BACKBONE_PREFIXES:
        if key.startswith(prefix) and re.match(r"^(stem\.|res[2-5]\.)", key[len(prefix):]):
            return key[len(prefix):]
    return None


def summarize_keys(keys: Sequence[str], limit: int = 5, separator: str = ", ") -> str:
    """``keys`` for a message: the count, the prefix they share and the first few, never all."""
    keys = list(keys)
    if not keys:
        return "no keys"
    shared = os.path.commonprefix(keys)
    shared = shared[: shared.rfind(".") + 1] if len(keys) > 1 else ""
    head = f"{len(keys)} key{'s' if len(keys) != 1 else ''}" + (f" (all under {shared!r})" if shared else "")
    shown = separator.join(keys[:limit]) + (f"{separator}... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{head}: {shown}"
