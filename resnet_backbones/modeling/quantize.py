"""int8 inference: post-training static quantization through PyTorch's PT2E flow.

:func:`quantize_for_inference` folds the norms (:func:`~resnet_backbones.modeling.fold.fold_norms`),
exports the backbone with ``torch.export``, lets the X86 inductor quantizer (torchao's
``X86InductorQuantizer``, its default config: int8 activations per tensor, int8 weights per
output channel) place observers, runs a few calibration images through it, converts, and
compiles the result with inductor's freezing, which lowers each quantize-conv-dequantize
pattern (with its ReLU and residual addition) to one oneDNN int8 convolution. The outputs are
float32 feature maps, as the float model's, so a Detectron2 head behind it runs as before.

The quantizer finds convolutions, additions and ReLUs by the source each graph node was traced
from (``nn.Conv2d``, ``operator.add``, ``nn.ReLU``). ``torch.export`` records none for the
operations our layers call (``ConvNorm`` is an ``nn.Conv2d`` subclass that convolves through
``F.conv2d``; the blocks' ``F.relu_`` and in-place sums), so :func:`_tag_sources` names them by
their ATen operator; without it nothing would be quantized.

Needs ``torchao`` (the ``[deploy]`` extra).
"""
from __future__ import annotations

import operator
from typing import Iterable, List

import torch
from torch import nn

from .fold import fold_norms
from .inference import InferenceCompiled, dynamic_image_shapes

__all__ = ["quantize_for_inference"]

_SOURCES = {
    torch.ops.aten.conv2d.default: nn.Conv2d,
    torch.ops.aten.add.Tensor: operator.add,
    torch.ops.aten.add_.Tensor: operator.add,
    torch.ops.aten.relu.default: nn.ReLU,
    torch.ops.aten.relu_.default: nn.ReLU,
}


def _pt2e():
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise ValueError("int8 quantization needs torchao (PyTorch's PT2E quantization): "
                         "pip install 'resnet-backbones[deploy]'") from None
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    return quantizer, prepare_pt2e, convert_pt2e, move_exported_model_to_eval


def _tag_sources(graph_module: torch.fx.GraphModule) -> int:
    """Gives the nodes the quantizer looks for the source it matches; returns how many."""
    tagged = 0
    for node in graph_module.graph.nodes:
        source = _SOURCES.get(node.target) if node.op == "call_function" else None
        if source is not None:
            stack = node.meta.get("source_fn_stack") or [(node.name, None)]
            node.meta["source_fn_stack"] = [*stack[:-1], (stack[-1][0], source)]
            tagged += 1
    return tagged


@torch.no_grad()
def quantize_for_inference(model: nn.Module, calibration: Iterable[torch.Tensor], *, dynamic: bool = True,
                           fullgraph: bool = True) -> InferenceCompiled:
    """``model`` (a backbone, with or without FPN) quantized to int8 and compiled for inference.

    Args:
        model: the float model, weights loaded; it is left as it is (the quantized graph is made
            from a folded copy).
        calibration: input batches (N, C, H, W) like those it will see, already normalised as the
            backbone's input; the observers record their activation ranges. A few images suffice.
        dynamic: export with symbolic height and width (multiples of ``size_divisibility``), for
            inputs of other sizes than the calibration's; ``False``: the first batch's size only.
        fullgraph: as :func:`~resnet_backbones.modeling.inference.compile_for_inference`.
    """
    batches: List[torch.Tensor] = list(calibration)
    if not batches:
        raise ValueError("calibration: no input batch; give a few images like those the model will see")
    for batch in batches:
        if not (torch.is_tensor(batch) and batch.dim() == 4 and batch.is_floating_point()):
            raise ValueError(f"calibration: each batch is a float tensor (N, C, H, W), got "
                             f"{tuple(batch.shape) if torch.is_tensor(batch) else type(batch).__name__}")
    quantizer, prepare_pt2e, convert_pt2e, move_to_eval = _pt2e()
    model = model.eval()
    folded = fold_norms(model).requires_grad_(False)
    sample = batches[0]
    dynamic_shapes = dynamic_image_shapes(model, sample) if dynamic else None
    graph = torch.export.export(folded, (sample,), dynamic_shapes=dynamic_shapes).module()
    if not _tag_sources(graph):
        raise ValueError(f"{type(model).__name__}: no convolution to quantize")
    prepared = prepare_pt2e(graph, quantizer)
    for batch in batches:
        prepared(batch)
    quantized = convert_pt2e(prepared)
    move_to_eval(quantized)
    return InferenceCompiled(model, program=quantized, precision="int8", fullgraph=fullgraph,
                             dynamic=None if dynamic else False)
