"""Loading weights into a detector with a strict, readable report.

:class:`BackboneCheckpointer` is Detectron2's ``DetectionCheckpointer`` with four changes:
``.pkl`` files are read without unpickling arbitrary objects; a backbone parameter the file
does not provide (or provides with another shape) is an error listing every such key instead
of a log line; the input convention recorded by ``convert_weights`` is compared with the
config's, warning when they differ; and checkpoints are written atomically, so a training run
killed while saving leaves the previous checkpoint and ``last_checkpoint`` intact.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import warnings
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..fileio import atomic_output

from .convert import METADATA_KEY
from .io import WeightsError, load_weights_file

logger = logging.getLogger(__name__)

#: Parameter prefixes that belong to the ResNet body inside Detectron2's detectors.
BODY_PREFIXES = ("backbone.bottom_up.stem.", "backbone.bottom_up.res", "backbone.stem.", "backbone.res",
                 "roi_heads.res5.")


#: Parameters a file may lack: deformable offsets start at zero, so ImageNet weights of the plain
#: network are the intended start of a deformable model (as in Detectron2's dconv configs).
OPTIONAL_BODY_PARTS = (".conv2_offset.",)


def _is_body_key(key: str) -> bool:
    return key.startswith(BODY_PREFIXES) and not key.endswith("num_batches_tracked")


def _is_required_body_key(key: str) -> bool:
    return _is_body_key(key) and not any(part in key for part in OPTIONAL_BODY_PARTS)


def remove_checkpoint_temporaries(save_dir: str) -> List[str]:
    """Delete what a kill during :meth:`BackboneCheckpointer.save` left behind; return the paths.

    ``atomic_output`` writes ``.<name>.<random>.tmp`` beside ``<name>``; a process killed before the
    rename leaves that file (a whole checkpoint's size). Only temporaries of checkpoints
    (``*.pth``) and of ``last_checkpoint`` are removed. Call it before a run starts writing.
    """
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(save_dir), ".*.tmp"))):
        target = os.path.basename(path)[1:-len(".tmp")].rpartition(".")[0]  # mkstemp's part has no dot
        if target.endswith(".pth") or target == "last_checkpoint":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append(path)
    return removed


class ConventionMismatchWarning(UserWarning):
    """The weights were trained with another input convention than the config feeds them."""


def convention_mismatches(recorded: Dict[str, Any], cfg) -> List[str]:
    """Differences between a recorded input convention and ``cfg``'s, one readable line each."""
    if not recorded:
        return []
    pairs = [
        ("INPUT.FORMAT", recorded["input_format"], cfg.INPUT.FORMAT),
        ("MODEL.PIXEL_MEAN", list(recorded["pixel_mean"]), list(cfg.MODEL.PIXEL_MEAN)),
        ("MODEL.PIXEL_STD", list(recorded["pixel_std"]), list(cfg.MODEL.PIXEL_STD)),
        ("MODEL.RESNETS.STRIDE_IN_1X1", recorded["stride_in_1x1"], cfg.MODEL.RESNETS.STRIDE_IN_1X1),
    ]
    lines = []
    for key, theirs, ours in pairs:
        same = (all(abs(a - b) < 1e-3 for a, b in zip(theirs, ours)) and len(theirs) == len(ours)
                if isinstance(theirs, list) else theirs == ours)
        if not same:
            lines.append(f"{key}: the weights expect {theirs}, the config has {ours}")
    return lines


class BackboneCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses to leave backbone parameters silently uninitialised.

    Args:
        cfg: when given, the input convention recorded in converted weights is checked against
            ``cfg.INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD`` and ``MODEL.RESNETS.STRIDE_IN_1X1``.
        strict_backbone: raise :class:`WeightsError` when the file leaves backbone parameters
            missing or mis-shaped (on by default; resuming a full checkpoint is unaffected).
        allow_unsafe_pickle: read ``.pkl``/``.pth`` files holding arbitrary objects.
    """

    def __init__(self, model, save_dir: str = "", *, cfg=None, strict_backbone: bool = True,
                 allow_unsafe_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.cfg = cfg
        self.strict_backbone = strict_backbone
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._loading: Optional[str] = None

    def load(self, path: str, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def save(self, name: str, *, tag_last: bool = True, **extra: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` (model, checkpointables, ``extra``) atomically.

        ``tag_last=False`` leaves ``last_checkpoint`` alone (e.g. for ``model_best``), so that
        ``--resume`` still continues from the latest iteration.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(extra)
        basename = f"{name}.pth"
        self.logger.info("Saving checkpoint to %s", os.path.join(self.save_dir, basename))
        with atomic_output(os.path.join(self.save_dir, basename)) as f:
            torch.save(data, f)
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_output(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not filename.endswith((".pkl", ".pth", ".pt")):
            return super()._load_file(filename)
        data = load_weights_file(self.path_manager.get_local_path(filename),
                                 allow_unsafe_pickle=self.allow_unsafe_pickle)
        if filename.endswith(".pkl") and not ("model" in data and "__author__" in data):
            # Caffe2 / Detectron1 model zoo layout, as Detectron2 reads it
            blobs = data.get("blobs", data)
            data = {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        # as detectron2's main branch does for .pth: exact names pass through unchanged,
        # backbone-relative ones (res2.0...) find their place under backbone.bottom_up
        data.setdefault("matching_heuristics", True)
        if self.cfg is not None:
            for line in convention_mismatches(data.get(METADATA_KEY, {}).get("convention"), self.cfg):
                warnings.warn(f"{filename}: {line}", ConventionMismatchWarning, stacklevel=2)
        return data

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        if incompatible is None or not self.strict_backbone:
            return incompatible
        missing = sorted(k for k in incompatible.missing_keys if _is_required_body_key(k))
        wrong = sorted(f"{k}: {tuple(a)} in the file, {tuple(b)} in the model"
                       for k, a, b in incompatible.incorrect_shapes if _is_body_key(k))
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} backbone parameters missing from the file: " + ", ".join(missing))
            if wrong:
                parts.append(f"{len(wrong)} backbone parameters with another shape: " + "; ".join(wrong))
            raise WeightsError(f"{self._loading}: does not fit the model's backbone "
                               "(check MODEL.RESNETS.* against the weights, or convert them with "
                               "tools/convert_weights.py):\n" + "\n".join(parts))
        return incompatible
