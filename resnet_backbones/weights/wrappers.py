"""Finding the ResNet trunk inside whatever wraps it.

Training frameworks and self-supervised methods save a ResNet under prefixes of their own
(``module.`` from DataParallel/DDP, ``model.`` or ``backbone.`` from Lightning modules,
``module.encoder_q.`` from MoCo, ``teacher``/``student`` dicts from DINO...), beside heads,
queues and other encoders. Rather than a fixed list of prefixes, the trunk is found by its own
keys: wherever a stem convolution (``conv1.weight``, ``conv1.0.weight``, ``stem.conv1.weight``,
``stem.conv.weight``, ``conv1_w``) sits beside a first stage (``layer1.0.``, ``res2.0.``,
``stages.0.``, ``res2_0_``), the part of the key before it is the prefix of an encoder.
When several encoders are found, the one the method's paper transfers is taken (MoCo: the query
encoder; DINO: the teacher; BYOL: the online network) unless ``prefix`` chooses; everything
left out is listed by group in the report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .io import WeightsError
from .naming import BACKBONE_PREFIXES, summarize_keys

DETECTOR_PREFIXES = tuple(p for p in BACKBONE_PREFIXES if p.startswith("backbone"))

#: a trunk's stem convolution, relative to the trunk's prefix (torchvision/timm, timm deep stem,
#: Detectron2, timm ResNetV2, Caffe2, timm ConvNeXt)
_STEM_ANCHOR = re.compile(r"^(conv1\.weight|conv1\.0\.weight|stem\.conv1\.weight|stem\.conv\.weight|conv1_w|"
                          r"0\.weight|stem\.0\.weight)$")
#: a first stage, relative to the trunk's prefix
_FIRST_STAGES = ("layer1.0.", "res2.0.", "stages.0.", "res2_0_", "4.0.conv1.")
#: a torchvision ResNet's children as an ``nn.Sequential`` (``nn.Sequential(*list(resnet.children())[:-1])``,
#: as in sthalles/PyTorch-BYOL models/resnet_base_network.py): index -> torchvision name
_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
#: first components of a trunk's own keys (and of the classifier that the renaming drops)
_TRUNK_PART = re.compile(r"^(conv1|bn1|layer\d+|stem|res\d+|stages|norm|fc|linear|head|classifier|"
                         r"conv1_w|res_conv1_bn_[sb]|res\d+_\d+_\w+|fc1000_[wb]|pred_\w+)$")
#: heads a self-supervised method keeps beside the trunk, inside the trunk's own prefix
#: (SwAV: ``module.projection_head``, ``module.prototypes``)
_HEAD_PART = re.compile(r"^(proj\w*|pred\w*|prototypes?\w*|mlp\w*|neck|queue\w*)$")
#: components that mark a group left out as a head
_HEAD_LABEL = re.compile(_HEAD_PART.pattern[:-2] + r"|heads?|fc|classifier|last_layer)$")
#: containers that hold the model weights of a checkpoint (timm, MoCo, Lightning, Detectron2, Caffe2)
_CONTAINERS = ("state_dict", "model", "blobs")

#: components of an encoder's prefix that say it is not the one a method transfers
_SECONDARY_PARTS = {
    "encoder_k": "the momentum (key) encoder",
    "key_encoder": "the momentum (key) encoder",
    "student": "DINO's student",
}
_SECONDARY_STARTS = {"momentum": "the momentum encoder", "target": "the target (momentum) network"}

#: component of the transferred encoder's prefix -> (method, what the encoder is)
_PRIMARY_PARTS = {
    "encoder_q": ("MoCo v1/v2", "query encoder"),
    "base_encoder": ("MoCo v3", "base (query) encoder"),
    "teacher": ("DINO", "teacher"),
}
_PRIMARY_STARTS = {"online": ("BYOL", "online network")}


@dataclass
class Unwrapped:
    """The trunk found in a checkpoint, with what was around it."""

    state_dict: Dict[str, Any]
    prefix: str = ""
    container: str = ""
    method: str = ""
    #: ``(group, tensor count, why)`` for everything in the file that is not the trunk
    left_out: List[Tuple[str, int, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: an architecture name the checkpoint records beside the weights (timm's train.py: ``arch``)
    recorded_arch: Optional[str] = None
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def self_supervised(self) -> bool:
        return bool(self.method)


def _is_array(value: Any) -> bool:
    return torch.is_tensor(value) or isinstance(value, np.ndarray)


def flatten(obj: Any, prefix: str = "") -> Tuple[Dict[str, Any], List[str]]:
    """``(dotted key -> tensor or array, names of the non-tensor entries)`` of nested dicts and lists."""
    tensors: Dict[str, Any] = {}
    others: List[str] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        name = f"{prefix}{key}"
        if _is_array(value):
            tensors[name] = value
        elif isinstance(value, (dict, list, tuple)) and value:
            sub_tensors, sub_others = flatten(value, name + ".")
            tensors.update(sub_tensors)
            others += sub_others
        else:
            others.append(name)
    return tensors, others


def find_encoders(keys) -> List[str]:
    """Prefixes under which a whole ResNet trunk (stem convolution and first stage) lies."""
    keys = list(keys)
    candidates = []
    for key in keys:
        starts = [0] + [m.end() for m in re.finditer(r"\.", key)]
        for start in starts:
            prefix = key[:start]
            if prefix not in candidates and _STEM_ANCHOR.match(key[start:]):
                candidates.append(prefix)
    return [p for p in candidates if any(k.startswith(p + stage) for k in keys for stage in _FIRST_STAGES)]


def _role(prefix: str) -> Tuple[bool, str, str]:
    """``(secondary, method, description)`` of the encoder under ``prefix``, from its components."""
    for part in prefix.rstrip(".").split("."):
        if part in _SECONDARY_PARTS:
            return True, "", _SECONDARY_PARTS[part]
        for start, description in _SECONDARY_STARTS.items():
            if part.startswith(start):
                return True, "", description
    for part in prefix.rstrip(".").split("."):
        if part in _PRIMARY_PARTS:
            return (False,) + _PRIMARY_PARTS[part]
        for start, role in _PRIMARY_STARTS.items():
            if part.startswith(start):
                return (False,) + role
    return False, "", "an encoder"


def _same_tensors(tensors: Dict[str, Any], prefix_a: str, prefix_b: str) -> bool:
    a = {k[len(prefix_a):]: v for k, v in tensors.items() if k.startswith(prefix_a)}
    b = {k[len(prefix_b):]: v for k, v in tensors.items() if k.startswith(prefix_b)}
    trunk = [k for k in a if _TRUNK_PART.match(k.split(".")[0])]
    return all(k in b and a[k].shape == b[k].shape and bool((torch.as_tensor(a[k]) == torch.as_tensor(b[k])).all())
               for k in trunk)


def _group(key: str, prefix: str, encoders: List[str]) -> str:
    """The group ``key`` is listed under: the components it shares with ``prefix`` and one more,
    or more where that would still hold an encoder (DINO's ``student.`` holds its backbone and
    its head: the head is ``student.module.head.``)."""
    parts, prefix_parts = key.split("."), prefix.rstrip(".").split(".") if prefix else []
    shared = 0
    while shared < min(len(parts) - 1, len(prefix_parts)) and parts[shared] == prefix_parts[shared]:
        shared += 1
    depth = shared + 1
    while depth < len(parts) and any(e.startswith(".".join(parts[:depth]) + ".") for e in encoders):
        depth += 1
    return ".".join(parts[:depth]) + ("." if depth < len(parts) else "")


def _method_from_heads(keys: List[str], prefix: str) -> str:
    """A self-supervised method recognised by the heads beside the trunk."""
    rests = [k[len(prefix):] if k.startswith(prefix) else k for k in keys]
    if any(re.search(r"(^|\.)queue2$", k) for k in keys):
        return "DenseCL"
    if any(re.search(r"(^|\.)prototypes(\.|\d)", k) for k in keys):
        return "SwAV / DeepCluster-v2"
    if any(re.search(r"(^|\.)queue$", k) for k in keys):
        return "MoCo v1/v2"
    if any(r.startswith("fc.0.") for r in rests) and any(r.startswith("fc.2.") for r in rests):
        return "an MLP projection head as fc, SimCLR-style"
    if any(re.search(r"(^|\.)(projector|projection_head|predictor)\.", k) for k in keys):
        return "a projection head, Barlow Twins / SimCLR / BYOL-style"
    return ""


def unwrap_checkpoint(obj: Any, path: Any = "<checkpoint>", prefix: Optional[str] = None) -> Unwrapped:
    """The ResNet trunk of the checkpoint ``obj`` (the object a weights file holds).

    ``prefix`` names the encoder to take where several are found (``module.encoder_k.``);
    without it the one a method transfers is taken, and a file whose encoders no rule tells
    apart is refused, naming them. A file with no recognisable trunk is refused with its first
    keys and what was looked for.
    """
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    metadata = {k: v for k, v in obj.items()
                if isinstance(k, str) and (k.startswith("__") or k in ("matching_heuristics", "resnet_backbones"))}
    recorded = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    container = next((c for c in _CONTAINERS if isinstance(obj.get(c), dict) and obj[c]), "")
    inner = obj[container] if container else {k: v for k, v in obj.items() if k not in metadata}
    tensors, _ = flatten(inner)
    outside_container = []
    if container:
        outside, _ = flatten({k: v for k, v in obj.items() if k != container and k not in metadata})
        outside_container = sorted(outside)
    encoders = find_encoders(tensors)
    if not encoders:
        raise WeightsError(
            f"{path}: no ResNet trunk found: looked for a stem convolution (conv1.weight, conv1.0.weight, "
            f"stem.conv1.weight, stem.conv.weight, stem.0.weight or conv1_w) beside a first stage ({', '.join(_FIRST_STAGES)}) "
            f"under any prefix{f' in its {container!r} entry' if container else ''}; "
            f"the file holds {summarize_keys(sorted(tensors) or sorted(map(str, obj)))}")
    chosen, notes, others = _choose(encoders, tensors, path, prefix)
    _, method, description = _role(chosen)
    if chosen in DETECTOR_PREFIXES and f"{chosen}stem.conv1.weight" in tensors:
        # a Detectron2 detector: its body keys are read through their detector prefixes (a C4
        # model keeps res5 in roi_heads), the rest is the detector's own
        return Unwrapped(tensors, "", container, "", [], [], recorded, metadata)

    state_dict, left = {}, {}
    for key, value in tensors.items():
        rest = key[len(chosen):] if key.startswith(chosen) else None
        if rest is not None and not _HEAD_PART.match(rest.split(".")[0]):
            state_dict[rest] = value
            continue
        owner = next((p for p in others if key.startswith(p)), None)
        group = owner if owner is not None else _group(key, chosen, encoders)
        is_head = rest is not None or any(_HEAD_LABEL.match(part) for part in group.split("."))
        kind = "a queue" if "queue" in group else "prototypes" if "prototypes" in group else "a head"
        why = others[owner] if owner is not None else (kind if is_head else "")
        left.setdefault(group, [0, why])[0] += 1
    if "0.weight" in state_dict and "4.0.conv1.weight" in state_dict:
        state_dict = {_CHILDREN.get(k.split(".")[0], k.split(".")[0]) + k[len(k.split(".")[0]):]: v
                      for k, v in state_dict.items()}
        notes.append("the trunk is a torchvision ResNet's children in an nn.Sequential (0 = conv1, 1 = bn1, "
                     "4..7 = layer1..layer4)")
    method = method or _method_from_heads(list(tensors), chosen)
    if method == "MoCo v1/v2" and any(k.endswith("queue2") for k in tensors):
        method = "DenseCL"
    left_out = [(g, n, why) for g, (n, why) in left.items()]
    if outside_container:
        groups: Dict[str, int] = {}
        for key in outside_container:
            top = key.split(".")[0]
            groups[top] = groups.get(top, 0) + 1
        left_out += [(g, n, f"outside the {container!r} entry") for g, n in groups.items()]
    if chosen or len(encoders) > 1:
        what = f"{method}'s {description}" if method and description != "an encoder" else "the ResNet trunk"
        notes.insert(0, f"took {what} under {chosen!r}" + (f" of the {container!r} entry" if container else ""))
    return Unwrapped(state_dict, chosen, container, method, left_out, notes, recorded, metadata)


def _choose(encoders: List[str], tensors: Dict[str, Any], path: Any, prefix: Optional[str]
            ) -> Tuple[str, List[str], Dict[str, str]]:
    """``(chosen prefix, notes, other encoder prefix -> what it is)``."""
    notes: List[str] = []
    roles = {p: _role(p)[2] for p in encoders}
    if prefix is not None:
        wanted = prefix if prefix in ("", ".") or prefix.endswith(".") else prefix + "."
        wanted = "" if wanted == "." else wanted
        if wanted not in encoders:
            raise WeightsError(f"{path}: --prefix {prefix!r}: no ResNet trunk there; trunks were found under "
                               + ", ".join(repr(p) for p in encoders))
        others = {p: roles[p] for p in encoders if p != wanted}
        if others:
            notes.append("also in the file: " + ", ".join(f"{p!r} ({r})" for p, r in others.items()))
        return wanted, notes, others
    distinct: List[str] = []
    twins: Dict[str, str] = {}
    # a named role first, so that of two prefixes of one module the telling one is kept
    for candidate in sorted(encoders, key=lambda p: roles[p] == "an encoder"):
        twin = next((d for d in distinct if _same_tensors(tensors, candidate, d)), None)
        if twin is None:
            distinct.append(candidate)
        else:
            twins[candidate] = f"the same tensors as {twin!r}: one module registered twice"
    if len(distinct) == 1:
        return distinct[0], notes, twins
    primaries = [p for p in distinct if not _role(p)[0]]
    if len(primaries) != 1:
        raise WeightsError(f"{path}: holds {len(distinct)} ResNet encoders, under "
                           + ", ".join(repr(p) for p in distinct) + "; choose one with --prefix")
    chosen = primaries[0]
    others = {p: roles[p] for p in distinct if p != chosen}
    notes.append("also in the file: " + ", ".join(f"{p!r} ({r})" for p, r in others.items())
                 + "; choose another with --prefix")
    return chosen, notes, {**others, **twins}
