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

On CPU the graph's wrapper, the code that calls each kernel and oneDNN convolution in turn and
allocates the buffers between them, is generated in C++ (inductor's ``cpp_wrapper``) instead of
Python: at 224x224, batch 1, the Python wrapper took about 2 ms of a compiled R-50's 44
(``torch.profiler``), and the C++ one made it 4% faster on one thread (44.1 to 42.2 ms) and 6% on
two (26.6 to 24.9 ms), for about 10% more compile time. ``cpp_wrapper=False`` keeps Python's.

Frozen weights are constants of the compiled code (the packed convolution weights are copies,
other constants may share the module's storage): changing the model's weights after compiling
is not supported; load the weights first, or compile again.

``dtype=torch.bfloat16`` runs the model under ``torch.autocast`` in bfloat16: convolutions and
matrix products in bfloat16 (oneDNN's AVX512-BF16/AMX kernels on CPU, whose peak is about twice
float32's), with the float32 weights cast once, as frozen constants. Outputs come back in the
input's dtype, so a Detectron2 head behind the backbone runs as before. Where the hardware has no
native bfloat16 arithmetic (oneDNN would emulate it, slower than float32) it is refused.
The int8 path is :func:`resnet_backbones.modeling.quantize.quantize_for_inference`.
In float32, :func:`resnet_backbones.modeling.winograd.winograd_convolutions` can be applied to the
model before compiling; a model holding its convolutions is refused with bfloat16.

Compiling also calls :func:`keep_freed_memory`: glibc's malloc hands every allocation over 32 MiB
to the system on free (``mmap``/``munmap``), so each call of a model on large maps faulted the
pages of its big activations in again, zeroed by the kernel (at 800x1216 the res2 maps alone are
62 MB each). Kept for reuse, as ONNX Runtime's and OpenVINO's arenas keep theirs, a Winograd
256-channel convolution at 200x304 took 256 ms instead of 455 (``modeling/winograd.py``). The
process then holds its peak memory, as PyTorch's CUDA caching allocator holds device memory;
``compile_for_inference(..., keep_memory=False)`` leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import platform
from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .winograd import has_winograd

__all__ = ["InferenceCompiled", "check_bfloat16_support", "compile_for_inference", "dynamic_image_shapes",
           "keep_freed_memory", "native_bfloat16"]

_DTYPES = (None, torch.float32, torch.bfloat16)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that supports it, or a CPU
    with AVX512-BF16 or AMX (what oneDNN's fast bfloat16 convolutions use)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def check_bfloat16_support(device: torch.device) -> None:
    """Raises ``ValueError`` where ``device`` has no native bfloat16 arithmetic."""
    if not native_bfloat16(device):
        what = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} does not support it"
        raise ValueError(f"dtype=torch.bfloat16: {what}, so bfloat16 would be emulated and slower than float32; "
                         "compile in float32 (dtype=None)")


def dynamic_image_shapes(model: nn.Module, sample: torch.Tensor) -> tuple:
    """``torch.export``'s ``dynamic_shapes`` for a backbone's one input: height and width as
    symbols, multiples of its ``size_divisibility`` (an FPN's 32), so that one exported graph
    takes every size a detector pads its batches to."""
    divisibility = max(int(getattr(model, "size_divisibility", 0) or 0), 1)
    height, width = sample.shape[-2:]
    if height % divisibility or width % divisibility:
        raise ValueError(f"sample of {height}x{width}: {type(model).__name__} takes multiples of {divisibility}")
    # below 64 pixels a body without divisibility specializes (its last stage becomes 1x1)
    dims = [torch.export.Dim(name, min=64 if divisibility == 1 else 1, max=65536 // divisibility)
            for name in ("height", "width")]
    if divisibility > 1:
        dims = [divisibility * d for d in dims]
    return ({2: dims[0], 3: dims[1]},)


# mallopt's parameters in glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Makes this process's malloc keep freed memory for its next allocations instead of returning
    it to the system (see the module doc): no allocation is served by its own ``mmap`` and the
    heap's top is never trimmed. Process-wide and lasting; it changes no results. Returns whether
    it applied (glibc only: elsewhere malloc is left as it is)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


class InferenceCompiled(nn.Module):
    """``model``, compiled for inference with frozen weights (see the module doc).

    Calls run without gradients. Attributes the wrapper does not have are looked up on the
    wrapped model (a backbone's ``output_shape()``, ``size_divisibility``, ...), so it can take
    the backbone's place in a Detectron2 meta-architecture (``model.backbone = ...``).
    """

    def __init__(self, model: nn.Module, *, fullgraph: bool = True, dynamic: Optional[bool] = False,
                 mode: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                 program: Optional[nn.Module] = None, precision: Optional[str] = None, keep_memory: bool = True,
                 cpp_wrapper: Optional[bool] = None):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype}: one of None (the model's own), torch.float32 or torch.bfloat16")
        # Freezing skips parameters that require gradients, even under no_grad.
        self.model = model.eval().requires_grad_(False)
        self.device = _model_device(self.model)
        if dtype == torch.bfloat16:
            check_bfloat16_support(self.device)
            if has_winograd(self.model):
                raise ValueError("dtype=torch.bfloat16: the model holds Winograd convolutions "
                                 "(winograd_convolutions), which are float32 only; compile the model without them")
        self.autocast_dtype = dtype if dtype == torch.bfloat16 else None
        if keep_memory and self.device.type == "cpu":
            keep_freed_memory()
        #: whether inductor writes the graph's calls in C++ instead of Python (see the module doc)
        self.cpp_wrapper = self.device.type == "cpu" if cpp_wrapper is None else cpp_wrapper
        #: "float32", "bfloat16" or, for a program of quantize_for_inference, "int8"
        self.precision = precision or ("bfloat16" if self.autocast_dtype else "float32")
        # Not a submodule: the compiled module would list the same parameters a second time.
        # ``program``: what runs in the model's place (a quantized graph of it), else the model.
        object.__setattr__(self, "_compiled", torch.compile(self.model if program is None else program,
                                                            fullgraph=fullgraph, dynamic=dynamic, mode=mode))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True, cpp_wrapper=self.cpp_wrapper):
            if self.autocast_dtype is None:
                return self._compiled(*args, **kwargs)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                outputs = self._compiled(*args, **kwargs)
            dtype = next((a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()), torch.float32)
            return tree_map(lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t, outputs)

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


def compile_for_inference(model: nn.Module, *, dtype: Optional[torch.dtype] = None, fullgraph: bool = True,
                          dynamic: Optional[bool] = False, mode: Optional[str] = None,
                          keep_memory: bool = True, cpp_wrapper: Optional[bool] = None) -> InferenceCompiled:
    """``model`` (switched to eval mode, its parameters to ``requires_grad=False``) compiled by
    inductor with frozen weights, as an :class:`InferenceCompiled` module.

    Args:
        model: a backbone (ours, with or without FPN, folded or channels_last) or any module.
        dtype: ``torch.bfloat16`` computes in bfloat16 (see the module doc; ``ValueError`` where
            the device has no native bfloat16); ``None`` or ``torch.float32``: as the model is.
        fullgraph: fail on a graph break instead of compiling around it (our backbones have none).
        dynamic: ``False`` (default) compiles once per input size, which suits fixed-size
            inference; ``None`` lets Dynamo switch to dynamic shapes after a size changes, which
            suits detection inputs of many sizes (Dynamo recompiles at most 8 times per model by
            default, then runs eagerly).
        mode: ``torch.compile``'s mode (e.g. ``"max-autotune"``).
        keep_memory: on CPU, call :func:`keep_freed_memory` (see the module doc).
        cpp_wrapper: inductor's C++ wrapper around the compiled kernels (``None``: on CPU, where it
            saves the Python wrapper's per-call overhead; see the module doc).
    """
    return InferenceCompiled(model, fullgraph=fullgraph, dynamic=dynamic, mode=mode, dtype=dtype,
                             keep_memory=keep_memory, cpp_wrapper=cpp_wrapper)
