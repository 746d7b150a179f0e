"""Conversion of ResNet weights from any supported family into a Detectron2-loadable file.

``convert_weights`` reads a file safely, detects its family, renames its keys, infers the
architecture the weights describe, checks every key and shape against that architecture built
by this package, and writes ``{"model": ..., "__author__": ..., "matching_heuristics": True,
"resnet_backbones": {input convention and config keys}}``, the format Detectron2's
``DetectionCheckpointer`` reads through ``MODEL.WEIGHTS``.
"""
from __future__ import annotations

import json
import pickle
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..modeling.arch import DEPTHS, ConfigError, ResNetArch
from .io import PathLike, WeightsError, atomic_output, load_weights_file, to_numpy_state_dict, to_tensor_state_dict
from .naming import SOURCES, architecture_hints, body_key, detect_source, rename_state_dict, summarize_keys
from .pretrained import convert_pretrain_checkpoint, is_pretrain_checkpoint
from .timm_models import anti_aliased_twins, check_named_model, recorded_timm_model, timm_anti_alias
from .wrappers import unwrap_checkpoint


@dataclass(frozen=True)
class InputConvention:
    """How images must be fed to the weights: channel order, normalisation, stride placement."""

    input_format: str
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    stride_in_1x1: bool

    def config_items(self) -> List[Tuple[str, Any]]:
        return [("INPUT.FORMAT", self.input_format), ("MODEL.PIXEL_MEAN", list(self.pixel_mean)),
                ("MODEL.PIXEL_STD", list(self.pixel_std)), ("MODEL.RESNETS.STRIDE_IN_1X1", self.stride_in_1x1)]


#: ImageNet statistics in 0-255 RGB, as torchvision and timm normalise.
TORCHVISION_CONVENTION = InputConvention("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False)
#: MSRA/Caffe2 weights: BGR, mean subtraction only, stride in the 1x1.
MSRA_CONVENTION = InputConvention("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), True)
DEFAULT_CONVENTIONS = {"torchvision": TORCHVISION_CONVENTION, "timm": TORCHVISION_CONVENTION,
                       "caffe2": MSRA_CONVENTION, "detectron2": MSRA_CONVENTION}

METADATA_KEY = "resnet_backbones"

#: What self-supervised methods fine-tune a detector with, beyond the input convention (MoCo's
#: Detectron2 project, facebookresearch/moco detection/configs/Base-RCNN-C4-BN.yaml and
#: coco_R_50_C4_2x_moco.yaml: BN trained and synchronised, nothing frozen, precise BN statistics
#: before testing; the MoCo paper's R50-FPN runs synchronise BN in the FPN too). The shipped
#: configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_self_supervised.yaml sets them.
SELF_SUPERVISED_TRANSFER: Tuple[Tuple[str, Any], ...] = (
    ("MODEL.BACKBONE.FREEZE_AT", 0),
    ("MODEL.RESNETS.NORM", "SyncBN"),
    ("MODEL.FPN.NORM", "SyncBN"),
    ("TEST.PRECISE_BN.ENABLED", True),
)


@dataclass
class ConversionReport:
    source: str
    arch: ResNetArch
    convention: InputConvention
    num_tensors: int
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: where the trunk was in the file (``module.encoder_q.``), and by which method it was trained
    prefix: str = ""
    method: str = ""
    #: ``(group, tensor count, why)`` for every part of the file that is not the trunk
    left_out: List[Tuple[str, int, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def self_supervised(self) -> bool:
        return bool(self.method)

    def config_items(self) -> List[Tuple[str, Any]]:
        # facts of the weights only; the detector's choices (outputs, freezing, dilation...) stay the user's
        items = dict(self.arch.weight_config_items())
        items.update(self.convention.config_items())
        if self.arch.depthwise_first:  # the stride is on the depthwise convolution, whatever the source
            items["MODEL.RESNETS.STRIDE_IN_1X1"] = False
        return list(items.items())

    def transfer_items(self) -> List[Tuple[str, Any]]:
        """The detection-transfer keys of the weights' method (self-supervised weights only)."""
        return list(SELF_SUPERVISED_TRANSFER) if self.self_supervised else []

    def format(self, output: Optional[PathLike] = None) -> str:
        lines = [f"source format: {self.source}; {self.num_tensors} tensors written"]
        counters = [k for k in self.dropped if k.endswith("num_batches_tracked")]
        others = [k for k in self.dropped if k not in counters]
        if counters:
            lines.append(f"dropped {len(counters)} BatchNorm step counters (num_batches_tracked)")
        if others:
            lines.append(f"dropped on purpose ({len(others)}): " + _abbreviate(others))
        if self.left_out:
            groups = [f"{g} ({n} tensor{'s' if n != 1 else ''}{': ' + why if why else ''})"
                      for g, n, why in self.left_out]
            lines.append(f"left out, not part of the trunk ({sum(n for _, n, _ in self.left_out)} tensors): "
                         + _abbreviate(groups, limit=12))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("config keys to set (YAML):")
        if output is not None:
            lines.append(f"  MODEL.WEIGHTS: {output}")
        lines += [f"  {k}: {v}" for k, v in self.config_items()]
        if self.self_supervised:
            lines.append(f"self-supervised weights ({self.method}): detection transfer as the method's own Detectron2 configs "
                         "(configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_self_supervised.yaml sets these):")
            lines += [f"  {k}: {v}" for k, v in self.transfer_items()]
        return "\n".join(lines)


def _abbreviate(keys: List[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# --------------------------------------------------------------------------- inference
def infer_arch(state_dict: Dict[str, Any], stride_in_1x1: bool, avg_down: bool = False,
               anti_alias: str = "", activation: str = "relu", single_activation: bool = False) -> ResNetArch:
    """The :class:`ResNetArch` whose body has exactly the keys and shapes of ``state_dict``.

    ``state_dict`` uses Detectron2 names, optionally with detector prefixes. Stride placement
    average-pool downsampling and anti-aliasing leave no trace in the weights, so they are given
    (average pooling from the source's naming, ``naming.architecture_hints``; anti-aliasing from a
    named timm model, ``timm_models``), and so are the activation and how many a block has
    (from the naming of timm's ConvNeXt). Inferred: depth (or blocks per stage), groups and width,
    stem type, widths and pool, pre-activation, shortcut option, SE ratio or ECA,
    deformable stages (DCN v1 or v2, offset groups; an offset width that fits both, such as 54,
    is read as v2 with a power-of-two group count), and the ConvNeXt road's depthwise
    convolutions (first or in the middle), kernel size, single norm, LayerNorm (a norm without
    statistics after a convolution with a bias), separate downsampling and layer scale.
    """
    body = {bk: v for k, v in state_dict.items() if (bk := body_key(k)) is not None}
    if "stem.conv1.weight" not in body:
        raise WeightsError("no stem convolution (stem.conv1.weight): not a ResNet state dict")
    blocks = defaultdict(set)
    for key in body:
        m = re.match(r"res([2-5])\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    counts = tuple(len(blocks[s]) for s in (2, 3, 4, 5) if blocks[s])
    block_type = "bottleneck" if "res2.0.conv3.weight" in body else "basic"
    conv1 = body.get("res2.0.conv1.weight")
    # a depthwise spatial convolution first (ConvNeXt): one input channel per group, wider than 1x1
    depthwise_first = (block_type == "bottleneck" and conv1 is not None and conv1.shape[1] == 1
                       and tuple(conv1.shape[2:]) != (1, 1))
    _check_regular(body, blocks, block_type, "conv2" if depthwise_first else "conv1")
    depths = [d for d, (t, n) in DEPTHS.items() if t == block_type and n[: len(counts)] == counts]
    num_blocks: Tuple[int, ...] = ()
    if not depths and len(counts) == 4:
        # any other depth: the blocks explicit, the depth their layer count (NUM_BLOCKS)
        num_blocks = counts
        depths = [2 + (3 if block_type == "bottleneck" else 2) * sum(counts)]
    if not depths:
        raise WeightsError(f"{block_type} blocks per stage {counts} match no known depth {sorted(DEPTHS)}, and "
                           "MODEL.RESNETS.NUM_BLOCKS needs all four stages")

    deep_stem = "stem.conv3.weight" in body
    stem_last = "stem.conv3" if deep_stem else "stem.conv1"
    stem_out = body[f"{stem_last}.weight"].shape[0]
    last_conv = "conv3" if block_type == "bottleneck" else "conv2"
    conv2 = body["res2.0.conv2.weight"]
    stages = [s for s in (2, 3, 4, 5) if blocks[s]]
    width, in_group = conv2.shape[0], conv2.shape[1]
    spatial = conv1 if depthwise_first or block_type == "basic" else conv2
    depthwise = depthwise_first or (block_type == "bottleneck" and width > 1 and all(
        body[f"res{s}.0.conv2.weight"].shape[1] == 1 for s in stages))
    num_groups = width // in_group if block_type == "bottleneck" and not depthwise else 1
    res2_out = body[f"res2.0.{last_conv}.weight"].shape[0]
    norm_weights = sorted(k for k in body if k.endswith(".norm.weight"))
    norm = ""
    if norm_weights:
        norm = "FrozenBN" if norm_weights[0][: -len("weight")] + "running_var" in body else "GN"
        # batch and group norms cancel a bias before them, a LayerNorm does not: a biased
        # convolution before a norm without statistics means LayerNorm (ConvNeXt)
        if norm == "GN" and any(k[: -len("norm.weight")] + "bias" in body for k in norm_weights
                                if ".downsample." not in k):
            norm = "LN"
    single_norm = bool(norm_weights) and block_type == "bottleneck" and "res2.0.conv2.norm.weight" not in body \
        and "res2.0.conv1.norm.weight" in body
    modulated, offset_groups = _infer_deform(body, stages)
    stem_type, stem_width = "basic", ResNetArch.stem_width
    if deep_stem:
        first, second = body["stem.conv1.weight"].shape[0], body["stem.conv2.weight"].shape[0]
        stem_type, stem_width = ("deep", first) if first == second else ("tiered", second)
        if stem_type == "tiered" and first != second // 4 * 3:
            raise WeightsError(f"a deep stem {first} then {second} wide is neither deep (equal widths) nor "
                               f"tiered (the first 3/4 of the second, as timm's deep_tiered)")
    separate = any(f"res{s}.downsample.weight" in body for s in stages)
    return ResNetArch(
        depthwise=depthwise,
        depthwise_first=depthwise_first,
        kernel_size=spatial.shape[2],
        activation=activation,
        single_activation=single_activation,
        single_norm=single_norm,
        downsample="separate" if separate else "block",
        # the initial value is not in the weights; any positive one builds the same tensors
        layer_scale=1e-6 if "res2.0.layer_scale" in body else 0.0,
        depth=depths[0],
        num_blocks=num_blocks,
        out_features=tuple(f"res{s}" for s in stages),
        norm=norm,
        num_groups=num_groups,
        width_per_group=width // num_groups if block_type == "bottleneck" else 64,
        # a block whose depthwise convolution comes first strides there
        stride_in_1x1=stride_in_1x1 and not depthwise_first,
        stem_out_channels=stem_out,
        res2_out_channels=res2_out,
        freeze_at=0,
        in_channels=body["stem.conv1.weight"].shape[1],
        stem_type="patchify" if not deep_stem and tuple(body["stem.conv1.weight"].shape[2:]) == (4, 4) else stem_type,
        stem_width=stem_width,
        stem_pool="conv" if "stem.pool.weight" in body else "max",
        anti_alias=anti_alias,
        eca="res2.0.eca.conv.weight" in body,
        # a pre-activation stem leaves its output to the first block's norm
        preact=bool(norm_weights) and f"{stem_last}.norm.weight" not in body,
        # separately downsampled stages keep their shape in every block: identities (option B)
        shortcut="B" if separate else _infer_shortcut(body, blocks, stem_out != res2_out),
        avg_down=avg_down,
        se_ratio=_infer_se_ratio(body, stages),
        deform_on_per_stage=tuple(f"res{s}.0.conv2_offset.weight" in body for s in (2, 3, 4, 5)),
        deform_modulated=modulated,
        deform_num_groups=offset_groups,
    ).validated()


def _check_regular(body: Dict[str, Any], blocks: Dict[int, set], block_type: str, width_conv: str = "conv1") -> None:
    """Refuse, by name, trunks that one ``ResNetArch`` cannot describe."""
    mixed = [f"res{s}" for s in blocks if blocks[s] and (f"res{s}.0.conv3.weight" in body) != (block_type == "bottleneck")]
    if mixed:
        raise WeightsError(f"{', '.join(mixed)} and res2 have different block types (basic and bottleneck mixed, as "
                           "timm's test_resnet); one block type per network is supported")
    for stage in sorted(blocks):
        widths = {tuple(body[f"res{stage}.{b}.{width_conv}.weight"].shape[:1]) for b in blocks[stage]
                  if f"res{stage}.{b}.{width_conv}.weight" in body}
        if len(widths) > 1:
            raise WeightsError(f"res{stage}'s blocks have different widths {sorted(w[0] for w in widths)} (a pruned "
                               "network, as timm's *_pruned); one width per stage is supported")
    for key in (f"res{s}.0.shortcut.weight" for s in sorted(blocks)):
        if key in body and tuple(body[key].shape[2:]) != (1, 1):
            raise WeightsError(f"{key}: {tuple(body[key].shape[2:])} projection shortcuts (timm's down_kernel_size, as "
                               "in senet154) are not supported; projections are 1x1")
    for key in ("res2.0.conv1.weight", "res2.0.conv2.weight"):
        if key not in body:
            raise WeightsError(f"no {key}: the stages are not ResNet blocks of conv1, conv2 (and conv3)")


def _infer_shortcut(body: Dict[str, Any], blocks: Dict[int, set], res2_reshapes: bool) -> str:
    projects = {(s, b) for s in blocks for b in blocks[s] if f"res{s}.{b}.shortcut.weight" in body}
    if any(b > 0 for _, b in projects):
        return "C"
    # option B projects in the first block of every stage that changes the shape
    reshaping = {(s, 0) for s in blocks if blocks[s] and (s > 2 or res2_reshapes)}
    return "A" if reshaping - projects else "B"


def _infer_se_ratio(body: Dict[str, Any], stages: List[int]) -> float:
    if "res2.0.se.fc1.weight" not in body:
        return 0.0
    # the widest stage rounds least, so gives the ratio the closest
    hidden, channels = body[f"res{stages[-1]}.0.se.fc1.weight"].shape[:2]
    return hidden / channels


def _infer_deform(body: Dict[str, Any], stages: List[int]) -> Tuple[bool, int]:
    offsets = [body[k].shape[0] for s in stages if (k := f"res{s}.0.conv2_offset.weight") in body]
    if not offsets:
        return False, 1
    # 9 sampling points per offset group: 2 coordinates each, and a mask value with DCN v2
    channels = offsets[0]
    v2_groups = channels // 27 if channels % 27 == 0 else 0
    if v2_groups and (channels % 18 or v2_groups & (v2_groups - 1) == 0):
        return True, v2_groups
    if channels % 18:
        raise WeightsError(f"deformable offsets with {channels} channels fit neither DCN v1 (18 per offset "
                           "group) nor v2 (27 per group)")
    return False, channels // 18


def check_against_arch(state_dict: Dict[str, Any], arch: ResNetArch) -> None:
    """Raise listing every body key of ``state_dict`` that ``arch`` lacks, misses or shapes differently."""
    from ..modeling.resnet import ResNet

    with torch.device("meta"):  # only the shapes are needed: no memory, no initialisation
        model = ResNet.from_arch(arch)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {bk: tuple(v.shape) for k, v in state_dict.items() if (bk := body_key(k)) is not None}
    unplaced = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    wrong = sorted(f"{k}: {given[k]} in the file, {tuple(expected[k])} in the model"
                   for k in set(given) & set(expected) if tuple(expected[k]) != given[k])
    problems = []
    if unplaced:
        problems.append("keys with no place in the model: " + summarize_keys(unplaced))
    if missing:
        problems.append("model keys missing from the file: " + summarize_keys(missing))
    if wrong:
        problems.append("keys whose shape does not fit: " + summarize_keys(wrong, separator="; "))
    if problems:
        raise WeightsError("; ".join(problems))


# --------------------------------------------------------------------------- conversion
def convert_state_dict(
    state_dict: Dict[str, Any],
    source: Optional[str] = None,
    *,
    convention: Optional[InputConvention] = None,
    arch: Optional[ResNetArch] = None,
    metadata: Optional[Dict[str, Any]] = None,
    path: PathLike = "<state dict>",
    prefix: Optional[str] = None,
    timm_model: Optional[str] = None,
) -> Tuple[Dict[str, Any], ConversionReport]:
    """Find the trunk in ``state_dict`` (a state dict or a whole checkpoint, wrapped in any way
    :func:`~.wrappers.unwrap_checkpoint` knows; ``prefix`` picks one of several encoders), rename
    and check it; returns Detectron2-named tensors and the report."""
    unwrapped = unwrap_checkpoint(state_dict, path, prefix)
    metadata = {**unwrapped.metadata, **(metadata or {})}
    state_dict = unwrapped.state_dict
    source = source or detect_source(state_dict.keys())
    if source is None:
        raise WeightsError(f"{path}: cannot tell which family these weights come from (first keys: "
                           f"{_abbreviate(sorted(state_dict))}); pass --source, one of {SOURCES}")
    renamed, dropped, unplaced = rename_state_dict(state_dict, source)
    try:
        hints, hint_notes = architecture_hints(state_dict.keys(), source)
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None
    if unplaced:
        where = f" (under {unwrapped.prefix!r})" if unwrapped.prefix else ""
        raise WeightsError(f"{path}: keys that have no place in a {source} ResNet{where}: "
                           + summarize_keys(unplaced))
    renamed = to_tensor_state_dict(renamed)
    recorded = (metadata or {}).get(METADATA_KEY, {}).get("convention")
    convention = convention or (InputConvention(**recorded) if recorded else DEFAULT_CONVENTIONS[source])
    notes = list(hint_notes)
    if source == "detectron2" and not recorded:
        notes.append("Detectron2 checkpoints do not record their input convention; assumed MSRA's "
                     "(BGR, stride in 1x1). Most model-zoo weights use it; X-101-32x8d uses "
                     "STRIDE_IN_1X1: False and RGB torchvision statistics.")
    named, named_by = timm_model, "--timm-model"
    if named is None and recorded_timm_model(unwrapped.recorded_arch):
        named, named_by = unwrapped.recorded_arch, "the checkpoint's recorded arch"
    warnings = []
    try:
        anti_alias = timm_anti_alias(named, named_by) if named else ""
        inferred = infer_arch(renamed, convention.stride_in_1x1, **hints, anti_alias=anti_alias)
        if named:
            check_named_model(inferred, named, named_by)
            notes.append(f"architecture named by {named_by}: {named}"
                         + (f" (MODEL.RESNETS.ANTI_ALIAS {anti_alias!r})" if anti_alias else ""))
        elif arch is None and (twins := anti_aliased_twins(inferred)):
            warnings.append("anti-aliasing leaves no trace in the weights: these tensors are exactly those of "
                            f"timm's {', '.join(twins)} too, which anti-alias their downsampling; converted as "
                            "the plain network. If the weights come from one of those, pass --timm-model NAME")
    except (ConfigError, ValueError) as e:
        raise WeightsError(f"{path}: {e}") from None
    target = arch or inferred
    try:
        check_against_arch(renamed, target)
    except WeightsError as e:
        raise WeightsError(f"{path}: does not fit the architecture "
                           f"{dict(target.weight_config_items())}: {e}") from None
    report = ConversionReport(source, target, convention, len(renamed), dropped, unwrapped.notes + notes,
                              prefix=unwrapped.prefix, method=unwrapped.method, left_out=unwrapped.left_out,
                              warnings=warnings)
    return renamed, report


def convert_weights(
    input_path: PathLike,
    output_path: PathLike,
    *,
    source: Optional[str] = None,
    convention: Optional[InputConvention] = None,
    arch: Optional[ResNetArch] = None,
    allow_unsafe_pickle: bool = False,
    ema: bool = False,
    prefix: Optional[str] = None,
    timm_model: Optional[str] = None,
) -> ConversionReport:
    """Convert the weights in ``input_path`` and write them to ``output_path`` (``.pth`` or ``.pkl``).

    A checkpoint of ``tools/pretrain_imagenet.py`` is recognised: its stored config gives the
    architecture, its recorded convention is kept, and ``ema`` picks its EMA weights.

    Raises :class:`WeightsError` naming every key that cannot be placed or whose shape does not
    fit; nothing is written then. The output appears atomically.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix not in (".pth", ".pkl"):
        raise WeightsError(f"{output_path}: the output must end in .pth or .pkl "
                           "(the formats DetectionCheckpointer reads)")
    if source is not None and source not in SOURCES:
        raise WeightsError(f"--source {source!r}: expected one of {SOURCES}")
    obj = load_weights_file(input_path, allow_unsafe_pickle=allow_unsafe_pickle)
    if is_pretrain_checkpoint(obj):
        return convert_pretrain_checkpoint(obj, input_path, output_path, ema=ema, arch=arch, convention=convention)
    if ema:
        raise WeightsError(f"{input_path}: --ema applies to checkpoints of tools/pretrain_imagenet.py, "
                           "which keep an EMA of the weights; this file holds one set of weights")
    renamed, report = convert_state_dict(obj, source, convention=convention, arch=arch, path=input_path,
                                         prefix=prefix, timm_model=timm_model or hub_architecture(input_path))
    save_detectron2_weights(renamed, output_path, report)
    return report


def hub_architecture(weights_path: PathLike) -> Optional[str]:
    """The timm model a hub download names in the ``config.json`` beside its weights, if any."""
    config = Path(weights_path).with_name("config.json")
    try:
        name = json.loads(config.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded_timm_model(name) if isinstance(name, str) else None


def save_detectron2_weights(state_dict: Dict[str, Any], output_path: PathLike, report: ConversionReport) -> None:
    payload = {
        "__author__": f"resnet_backbones (from {report.source})",
        # suffix matching places res2.* under backbone.bottom_up.* (FPN) or roi_heads.res5 (C4)
        "matching_heuristics": True,
        METADATA_KEY: {"source": report.source, "convention": asdict(report.convention),
                       "config": dict(report.config_items())},
    }
    output_path = Path(output_path)
    with atomic_output(output_path) as f:
        if output_path.suffix == ".pkl":
            pickle.dump({**payload, "model": to_numpy_state_dict(state_dict)}, f)
        else:
            torch.save({**payload, "model": {k: v.contiguous() for k, v in state_dict.items()}}, f)
