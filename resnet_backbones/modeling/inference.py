"""Inference-time compilation: ``torch.compile`` with inductor's *freezing*.

Freezing makes inductor treat the weights as constants. On CPU it then folds BN-like affine maps
into the convolutions, packs every convolution weight once into oneDNN's blocked layout (eager
PyTorch repacks it on every call) and fuses ReLU and the residual addition into the
convolutions. At 224x224, batch 1, this is what makes a compiled R-50 about 1.4x Detectron2's
eager one on CPU (``make bench``); a plain ``torch.compile`` leaves the convolutions as they are.

Whether parameters are frozen is decided while Dynamo traces, from the global
``torch._inductor.config.freezing``; ``torch.compile(..., options={"freezing": True})`` only
reaches inductor after that, and silently compiles without freezing. :class:`InferenceCompiled`
therefore sets it around every call, so that a recompilation (a new input size) is frozen as
well, without changing the setting for anything else in the process.

Frozen weights are constants of the compiled code (the packed convolution weights are copies,
other constants may share the module's storage): changing the model's weights after compiling
is not supported; load the weights first, or compile again.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["InferenceCompiled", "compile_for_inference"]


class InferenceCompiled(nn.Module):
    """``model``, compiled for inference with frozen weights (see the module doc).

    Calls run without gradients. Attributes the wrapper does not have are looked up on the
    wrapped model (a backbone's ``output_shape()``, ``size_divisibility``, ...), so it can take
    the backbone's place in a Detectron2 meta-architecture (``model.backbone = ...``).
    """

    def __init__(self, model: nn.Module, *, fullgraph: bool = True, dynamic: Optional[bool] = False,
                 mode: Optional[str] = None):
        super().__init__()
        # Freezing skips parameters that require gradients, even under no_grad.
        self.model = model.eval().requires_grad_(False)
        # Not a submodule: the compiled module would list the same parameters a second time.
        object.__setattr__(self, "_compiled",
                           torch.compile(model, fullgraph=fullgraph, dynamic=dynamic, mode=mode))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def train(self, mode: bool = True) -> "InferenceCompiled":
        if mode:
            raise RuntimeError("InferenceCompiled is for inference only: compile the training model with "
                               "torch.compile instead")
        return super().train(False)


def compile_for_inference(model: nn.Module, *, fullgraph: bool = True, dynamic: Optional[bool] = False,
                          mode: Optional[str] = None) -> InferenceCompiled:
    """``model`` (switched to eval mode, its parameters to ``requires_grad=False``) compiled by
    inductor with frozen weights, as an :class:`InferenceCompiled` module.

    Args:
        model: a backbone (ours, with or without FPN, folded or channels_last) or any module.
        fullgraph: fail on a graph break instead of compiling around it (our backbones have none).
        dynamic: ``False`` (default) compiles once per input size, which suits fixed-size
            inference; ``None`` lets Dynamo switch to dynamic shapes after a size changes, which
            suits detection inputs of many sizes (Dynamo recompiles at most 8 times per model by
            default, then runs eagerly).
        mode: ``torch.compile``'s mode (e.g. ``"max-autotune"``).
    """
    return InferenceCompiled(model, fullgraph=fullgraph, dynamic=dynamic, mode=mode)
