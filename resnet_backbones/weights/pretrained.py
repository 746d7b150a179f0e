"""Reading the checkpoints of ``tools/pretrain_imagenet.py`` for conversion into a detector.

Such a checkpoint holds the classifier's weights (``backbone.*`` and ``head.*``), optionally an
EMA of them, the full config as YAML text and the input convention the body was trained with.
The architecture is read from that config (not inferred), the head is dropped, and the
convention goes into the converted file, where ``BackboneCheckpointer`` checks it.

Only plain containers, numbers, strings and tensors are stored, so the file loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..modeling.arch import STAGE_NAMES, ConfigError, ResNetArch
from .io import PathLike, WeightsError

#: The value of a pretraining checkpoint's ``"format"`` key.
PRETRAIN_FORMAT = "resnet_backbones.pretrain_imagenet"
PRETRAIN_FORMAT_VERSION = 1

BODY_PREFIX = "backbone."
HEAD_PREFIX = "head."


def is_pretrain_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == PRETRAIN_FORMAT


def arch_from_config_text(text: str, path: PathLike) -> ResNetArch:
    """The body described by the ``MODEL.RESNETS.*`` keys of a config dumped as YAML."""
    from detectron2.config import CfgNode

    try:
        cfg = CfgNode.load_cfg(text)
        return ResNetArch.from_cfg(cfg).replace(out_features=STAGE_NAMES, freeze_at=0)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path}: the config stored in this checkpoint does not describe a body: {e}") from None


def read_pretrain_checkpoint(obj: Dict[str, Any], path: PathLike, *, ema: bool = False
                             ) -> Tuple[Dict[str, Any], Dict[str, Any], ResNetArch, List[str]]:
    """``(body state dict in Detectron2 names, convention, architecture, dropped keys)``."""
    if ema:
        averaged = obj.get("ema") or {}
        if "model" not in averaged:
            raise WeightsError(f"{path}: --ema: this run kept no EMA of the weights (PRETRAIN.EMA.ENABLED "
                               "was False); convert its plain weights (leave out --ema)")
        weights = averaged["model"]
    else:
        weights = obj["model"]
    body, dropped = {}, []
    for key, value in weights.items():
        if key.startswith(BODY_PREFIX) and not key.endswith("num_batches_tracked"):
            body[key[len(BODY_PREFIX):]] = value
        else:
            dropped.append(key)
    arch = arch_from_config_text(obj["config"], path)
    return body, dict(obj["input_convention"]), arch, dropped


def convert_pretrain_checkpoint(obj: Dict[str, Any], input_path: PathLike, output_path: PathLike, *,
                                ema: bool = False, arch: Optional[ResNetArch] = None, convention=None):
    """Write the body of a pretraining checkpoint as a Detectron2-loadable file; returns the report.

    ``arch`` (e.g. from ``--config-file``) replaces the stored architecture in the check;
    ``convention`` replaces the recorded one.
    """
    from .convert import METADATA_KEY, convert_state_dict, save_detectron2_weights

    version = obj.get("version")
    if version != PRETRAIN_FORMAT_VERSION:
        raise WeightsError(f"{input_path}: pretraining checkpoint version {version!r}; this version of "
                           f"resnet_backbones reads version {PRETRAIN_FORMAT_VERSION}")
    body, recorded, stored_arch, dropped = read_pretrain_checkpoint(obj, input_path, ema=ema)
    recorded = {"input_format": recorded["input_format"], "pixel_mean": tuple(recorded["pixel_mean"]),
                "pixel_std": tuple(recorded["pixel_std"]), "stride_in_1x1": bool(recorded["stride_in_1x1"])}
    # passed as converted files carry it, so it counts as recorded, not assumed
    renamed, report = convert_state_dict(body, "detectron2", convention=convention, arch=arch or stored_arch,
                                         metadata={METADATA_KEY: {"convention": recorded}}, path=input_path)
    epoch = obj.get("epoch")
    report.source = f"pretrain_imagenet.py checkpoint, {'EMA' if ema else 'plain'} weights after epoch {epoch}"
    report.dropped = dropped + report.dropped
    save_detectron2_weights(renamed, output_path, report)
    return report
