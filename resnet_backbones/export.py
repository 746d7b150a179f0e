"""Deployment export of detectors and backbones built on our bodies.

* TorchScript, by tracing (through Detectron2's ``TracingAdapter``) or by scripting (through
  Detectron2's ``scripting_with_instances``), of Faster/Mask R-CNN and RetinaNet;
* ONNX, by tracing, run by onnxruntime (the ``[deploy]`` extra);
* ``torch.export`` of a backbone (an ``ExportedProgram``), and ONNX of a backbone through it
  (``torch.onnx.export(dynamo=True)``: named feature-map outputs, symbolic height and width),
  which is what ONNX Runtime and OpenVINO run in ``tools/benchmark.py --only deploy``.

The functions take a built model (in eval mode, weights loaded, optionally folded with
:func:`~resnet_backbones.modeling.fold.fold_norms`): what the model holds, folded convolutions
and channels_last weights included, is what the exported file holds. Building a model from a
config file is :func:`build_model_from_config`, the one function the command line
(``tools/export_model.py``, :func:`main`) uses for it.

A traced or ONNX detector takes one image tensor ``(C, H, W)``, float, in ``INPUT.FORMAT``'s
channel order, already resized as Detectron2's ``DefaultPredictor`` does
(:func:`prepare_image`), and returns the flattened fields of its ``Instances`` before the final
resize: ``pred_boxes`` (N, 4), ``pred_classes``, ``scores``, for a mask model ``pred_masks``
(N, 1, 28, 28 probabilities) and ``image_size``. The ONNX outputs carry these names, a
TorchScript file records them (extra file ``output_names.json``); :func:`instances_from_outputs`
makes ``Instances`` of them again and ``detector_postprocess`` pastes the masks into the image.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from .cli import exits_cleanly
from .fileio import atomic_output
from .modeling.inference import dynamic_image_shapes

__all__ = [
    "FORMATS", "METHODS", "ONNX_OPSET", "DetectorExport", "build_model_from_config", "detector_inference",
    "export_backbone_onnx", "export_backbone_program",
    "export_detector", "instances_from_outputs", "load_torchscript", "main", "prepare_image", "run_onnx",
    "script_detector", "script_module", "trace_detector",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "torch_export")
METHODS = ("tracing", "scripting")
#: 16 is the first with ONNX RoiAlign's half-pixel alignment, which Detectron2's ROIAlign uses
ONNX_OPSET = 17
#: ``Instances`` fields a scripted detector can hold (Detectron2's export_model.py list)
SCRIPTED_FIELDS = {
    "proposal_boxes": Boxes, "objectness_logits": Tensor, "pred_boxes": Boxes, "scores": Tensor,
    "pred_classes": Tensor, "pred_masks": Tensor, "pred_keypoints": Tensor, "pred_keypoint_heatmaps": Tensor,
}
OUTPUT_NAMES_FILE = "output_names.json"


def _d2_export():
    """Detectron2's export package, with its TorchScript patches applied (on v0.6 through the
    stand-in in :mod:`resnet_backbones.compat`)."""
    import detectron2.export
    import detectron2.export.torchscript  # noqa: F401  (patches FPN and Detectron2's ResNet for scripting)

    return detectron2.export


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)``: our body, FPN backbones, the C4 head's res5, any module
    built of them. Raises ``ValueError`` for what TorchScript cannot express (activation
    checkpointing in training mode)."""
    _d2_export()
    return torch.jit.script(module)


def export_backbone_program(backbone: nn.Module, sample: Tensor, *,
                            dynamic_shapes: Optional[dict] = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a backbone in eval mode, for ``sample`` (N, C, H, W)."""
    if backbone.training:
        raise ValueError("torch.export of a backbone needs it in eval mode (call .eval())")
    with torch.no_grad():
        return torch.export.export(backbone, (sample,), dynamic_shapes=dynamic_shapes)


def export_backbone_onnx(backbone: nn.Module, sample: Tensor, output: Path, *, dynamic: bool = True) -> Path:
    """A backbone (eval mode; fold it first for deployment) as ONNX at ``output`` (written
    atomically): input ``image`` (N, C, H, W), one output per feature map, named as the
    backbone's (``res2``.. or ``p2``..). ``dynamic``: height and width symbolic, multiples of
    the backbone's ``size_divisibility`` (an FPN's 32); else ``sample``'s size only."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs onnx and onnxscript: pip install 'resnet-backbones[deploy]'") from None
    program = export_backbone_program(backbone, sample,
                                      dynamic_shapes=dynamic_image_shapes(backbone, sample) if dynamic else None)
    with torch.no_grad():
        names = list(backbone(sample))
        onnx_program = torch.onnx.export(program, (sample,), dynamo=True, opset_version=max(ONNX_OPSET, 18),
                                         input_names=["image"], output_names=names, verbose=False)
    output = Path(output)
    with atomic_output(output) as f:
        f.write(onnx_program.model_proto.SerializeToString())
    return output


def _check_detector(model: nn.Module) -> None:
    if not isinstance(model, (GeneralizedRCNN, RetinaNet)):
        raise ValueError(f"cannot export a {type(model).__name__}: export supports Detectron2's GeneralizedRCNN "
                         "(Faster/Mask R-CNN) and RetinaNet")
    if model.training:
        raise ValueError("export needs the model in eval mode (call .eval())")


def detector_inference(model: nn.Module, inputs: List[Dict[str, Tensor]]) -> List[Instances]:
    """What an exported detector computes, in eager PyTorch: the ``Instances`` of each input
    image before the final resize to its ``height``/``width`` (R-CNN masks as 28x28
    probabilities); ``detector_postprocess`` does that resize."""
    _check_detector(model)
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            return model.inference(inputs, do_postprocess=False)
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))


def _traced_inference(model: nn.Module, inputs):
    return [{"instances": detector_inference(model, inputs)[0]}]


def _schema_names(schema, name: str = "") -> List[str]:
    from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema

    if isinstance(schema, InstancesSchema):
        return [n for key, sub in zip(schema.keys, schema.schemas) for n in _schema_names(sub, key)] + ["image_size"]
    if isinstance(schema, DictSchema):
        return [n for key, sub in zip(schema.keys, schema.schemas) for n in _schema_names(sub, key)]
    if isinstance(schema, ListSchema):  # also TupleSchema
        return [n for i, sub in enumerate(schema.schemas) for n in _schema_names(sub, f"{name}{i}")]
    return [name]


class DetectorExport:
    """A detector flattened for tracing: ``adapter(image)`` returns a tuple of tensors, named
    ``output_names`` (the ``Instances`` fields of one image, and ``image_size``)."""

    def __init__(self, model: nn.Module, image: Tensor):
        _check_detector(model)
        if image.dim() != 3:
            raise ValueError(f"a detector exports for one (C, H, W) image; got shape {list(image.shape)}")
        self.adapter = _d2_export().TracingAdapter(model, [{"image": image}], _traced_inference).eval()
        self.image = image
        with torch.no_grad():
            self.adapter(image)  # fills in the outputs' schema
        self.output_names = _schema_names(self.adapter.outputs_schema)
        if len(set(self.output_names)) != len(self.output_names):
            raise ValueError(f"the model's outputs have repeated names {self.output_names}")


def trace_detector(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, List[str]]:
    """``torch.jit.trace`` of a detector for ``image``; returns the traced module and its output names."""
    export = DetectorExport(model, image)
    with torch.no_grad():
        traced = torch.jit.trace(export.adapter, (image,))
    return traced, export.output_names


class _ScriptableDetector(nn.Module):
    # returns dicts, not Instances (pytorch/pytorch#46944: Instances cannot leave a scripted module)
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()


class _ScriptableRCNN(_ScriptableDetector):
    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        return [i.get_fields() for i in self.model.inference(inputs, do_postprocess=False)]


class _ScriptableRetinaNet(_ScriptableDetector):
    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        # scripted, Detectron2's dense detectors return their results before the final resize
        return [i.get_fields() for i in self.model(inputs)]


def script_detector(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of a detector: takes a tuple of ``{"image": (C, H, W)}`` dicts and
    returns one dict of fields per image, as :func:`detector_inference` computes them."""
    _check_detector(model)
    wrapper = (_ScriptableRCNN if isinstance(model, GeneralizedRCNN) else _ScriptableRetinaNet)(model)
    return _d2_export().scripting_with_instances(wrapper, SCRIPTED_FIELDS)


def _save_torchscript(module: torch.jit.ScriptModule, path: Path, output_names: Optional[List[str]]) -> None:
    extra = {OUTPUT_NAMES_FILE: json.dumps(output_names)} if output_names else {}
    with atomic_output(path) as f:
        torch.jit.save(module, f, _extra_files=extra)


def load_torchscript(path) -> Tuple[torch.jit.ScriptModule, Optional[List[str]]]:
    """A TorchScript file written by :func:`export_detector`, and its output names (``None`` for
    a scripted detector, whose outputs are dicts already)."""
    extra = {OUTPUT_NAMES_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    names = extra[OUTPUT_NAMES_FILE]
    return module, (json.loads(names) if names else None)


def _onnx_bytes(export: DetectorExport) -> bytes:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ValueError("--format onnx needs the onnx package: pip install 'resnet-backbones[deploy]'") from None
    buffer = io.BytesIO()
    with torch.no_grad():
        # dynamo=False: the TorchScript-based exporter, which follows the traced (data-dependent) graph
        torch.onnx.export(export.adapter, (export.image,), buffer, opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["image"], output_names=export.output_names)
    return buffer.getvalue()


def export_detector(model: nn.Module, image: Tensor, output: Path, *, format: str = "torchscript",
                    method: str = "tracing") -> Path:
    """Export a detector (eval mode) to ``output`` (a file, written atomically); returns it.

    ``format`` ``"torchscript"`` with ``method`` ``"tracing"`` or ``"scripting"``, or ``"onnx"``
    (tracing only). ``image`` is the sample input of tracing (see :func:`prepare_image`).
    """
    if format not in ("torchscript", "onnx"):
        raise ValueError(f"format {format!r}: a detector exports as one of ('torchscript', 'onnx')")
    if method not in METHODS:
        raise ValueError(f"export method {method!r}: expected one of {METHODS}")
    if format == "onnx" and method != "tracing":
        raise ValueError("ONNX export goes through tracing: use --export-method tracing")
    output = Path(output)
    if format == "onnx":
        data = _onnx_bytes(DetectorExport(model, image))
        with atomic_output(output) as f:
            f.write(data)
    elif method == "tracing":
        traced, names = trace_detector(model, image)
        _save_torchscript(traced, output, names)
    else:
        _save_torchscript(script_detector(model), output, None)
    return output


def run_onnx(path, image: Tensor, *, threads: int = 0) -> Dict[str, Tensor]:
    """Run an ONNX detector from :func:`export_detector` with onnxruntime; its named outputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": image.numpy()})
    return {o.name: torch.from_numpy(np.asarray(v)) for o, v in zip(session.get_outputs(), outputs)}


def instances_from_outputs(outputs: Dict[str, Tensor]) -> Instances:
    """The ``Instances`` of one image from an exported detector's named outputs."""
    height, width = (int(v) for v in outputs["image_size"])
    fields = {k: (Boxes(v) if k in ("pred_boxes", "proposal_boxes") else v)
              for k, v in outputs.items() if k != "image_size"}
    return Instances((height, width), **fields)


def prepare_image(cfg, image: Optional[np.ndarray] = None, *, seed: int = 0) -> Tuple[Tensor, int, int]:
    """An input image resized as ``DefaultPredictor`` does (``INPUT.MIN_SIZE_TEST``,
    ``MAX_SIZE_TEST``), as a float ``(C, H, W)`` tensor, with the original height and width.

    ``image``: ``(H, W, C)`` uint8 in ``INPUT.FORMAT``; ``None`` generates a random one of
    ``MIN_SIZE_TEST`` x ``MIN_SIZE_TEST``.
    """
    import detectron2.data.transforms as T

    if image is None:
        size = cfg.INPUT.MIN_SIZE_TEST
        image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    height, width = image.shape[:2]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)), height, width


def read_image(path: str, image_format: str) -> np.ndarray:
    from detectron2.data import detection_utils

    try:
        return detection_utils.read_image(path, format=image_format)
    except OSError as e:  # PIL's UnidentifiedImageError included
        raise ValueError(f"--sample-image {path}: not a readable image ({e})") from None


def build_model_from_config(config_file: str, overrides: Sequence[str] = ()) -> Tuple[nn.Module, object]:
    """The model of a YAML (``KEY VALUE`` overrides) or LazyConfig (``key=value``) file, its
    weights (``MODEL.WEIGHTS`` / ``train.init_checkpoint``) loaded, in eval mode on CPU; returns
    ``(model, cfg)`` with ``cfg`` the run config. The one place the tool builds a model."""
    from .engine.config_frontends import build_model_from_run_config, is_lazy_config_file, load_training_config
    from .weights.checkpoint import BackboneCheckpointer

    on_cpu = ["train.device=cpu"] if is_lazy_config_file(config_file) else ["MODEL.DEVICE", "cpu"]
    cfg = load_training_config(config_file, [*on_cpu, *overrides], training=False)
    model = build_model_from_run_config(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        if not Path(cfg.MODEL.WEIGHTS).is_file():
            raise FileNotFoundError(f"MODEL.WEIGHTS = {cfg.MODEL.WEIGHTS}: no such file")
        BackboneCheckpointer(model, cfg=cfg).load(cfg.MODEL.WEIGHTS)
    return model, cfg


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a detector (or its backbone) for deployment.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=FORMATS, default="torchscript",
                        help="output format; torch_export exports the backbone alone (torch.export)")
    parser.add_argument("--export-method", choices=METHODS, default="tracing", help="method to export models")
    parser.add_argument("--sample-image", default=None, help="sample input image (default: a generated one)")
    parser.add_argument("--fold-norms", action="store_true",
                        help="fold every FrozenBN and eval-mode BN into its convolution before exporting")
    parser.add_argument("--output", required=True, help="output directory for the exported model")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


OUTPUT_FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "torch_export": "backbone.pt2"}


def run_export(args: argparse.Namespace, build: Callable = build_model_from_config) -> Path:
    """What ``tools/export_model.py`` does; returns the file it wrote."""
    output_dir = Path(args.output)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output {args.output}: exists and is not a directory")
    if args.format != "torchscript" and args.export_method == "scripting":
        raise ValueError(f"--format {args.format} goes through tracing: use --export-method tracing")
    if args.sample_image and not Path(args.sample_image).is_file():
        raise FileNotFoundError(f"--sample-image {args.sample_image}: no such file")
    model, cfg = build(args.config_file, args.opts)
    _check_detector(model)
    image_array = read_image(args.sample_image, cfg.INPUT.FORMAT) if args.sample_image else None
    image, _, _ = prepare_image(cfg, image_array)
    if args.fold_norms:
        from .modeling.fold import fold_norms

        model = fold_norms(model, inplace=True)
    output = output_dir / OUTPUT_FILES[args.format]
    if args.format == "torch_export":
        model_input = model.preprocess_image([{"image": image}]).tensor
        program = export_backbone_program(model.backbone, model_input)
        with atomic_output(output) as f:
            torch.export.save(program, f)
    else:
        export_detector(model, image, output, format=args.format, method=args.export_method)
    print(f"wrote {output}")
    return output


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    run_export(argument_parser().parse_args(argv))
    return 0
