"""Lets this package and detectron2 import and run on every detectron2 users have.

Supported: the v0.6 release (also as installed from the package index without its C++ extension)
and builds of the current main branch, with or without the extension. Nothing here changes a
complete detectron2: each patch applies only where the thing it stands in for is missing.

Import this module before anything imports detectron2 (``resnet_backbones/__init__.py`` does).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

__all__ = ["HAS_D2_EXTENSION", "MissingExtensionError", "apply"]


class MissingExtensionError(AttributeError):
    """An operation needs detectron2's compiled extension (``detectron2._C``), which is absent."""


def _make_extension_stand_in() -> types.ModuleType:
    module = types.ModuleType("detectron2._C")
    module.__file__ = "<resnet_backbones.compat stand-in for detectron2._C>"

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingExtensionError(
            f"detectron2._C.{name} is unavailable: detectron2 was installed without its C++ extension. "
            "This operation needs it. Alternatives that need no extension: deformable convolutions "
            "through resnet_backbones (torchvision ops), COCO evaluation through "
            "resnet_backbones.evaluation (faster-coco-eval or pycocotools). "
            "Otherwise build detectron2 from source with its extension."
        )

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    # what detectron2's collect_env_info (run by default_setup at every training start) asks
    module.get_compiler_version = lambda: "none (detectron2 installed without its C++ extension)"
    module.get_cuda_version = lambda: "none (detectron2 installed without its C++ extension)"
    module.has_cuda = lambda: False
    module._is_resnet_backbones_stand_in = True  # type: ignore[attr-defined]
    return module


def _extension_present() -> bool:
    if "detectron2._C" in sys.modules:
        return not getattr(sys.modules["detectron2._C"], "_is_resnet_backbones_stand_in", False)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except ImportError:  # detectron2 itself is missing
        return False


def _patch_pillow() -> None:
    # detectron2 v0.6 uses Image.LINEAR as a default argument; Pillow >= 10 removed that alias.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]


HAS_D2_EXTENSION = _extension_present()


class _ExportWithoutCaffe2Loader(importlib.abc.Loader):
    """Runs ``detectron2/export/__init__.py``; where that fails only because caffe2 is missing
    (v0.6 imports its caffe2 API unconditionally, and caffe2 is gone from torch), the package is
    completed as detectron2 main's does without caffe2: TracingAdapter and the TorchScript helpers,
    without the caffe2 API. Where it succeeds (main, or a torch with caffe2) nothing changes."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self.loader.exec_module(module)
        except ModuleNotFoundError as error:
            if not (error.name or "").split(".")[0] == "caffe2":
                raise
            from detectron2.export.flatten import TracingAdapter
            from detectron2.export.torchscript import dump_torchscript_IR, scripting_with_instances

            module.TracingAdapter = TracingAdapter
            module.dump_torchscript_IR = dump_torchscript_IR
            module.scripting_with_instances = scripting_with_instances
            module.__all__ = ["TracingAdapter", "dump_torchscript_IR", "scripting_with_instances"]
            module._resnet_backbones_without_caffe2 = True


class _ExportWithoutCaffe2Finder(importlib.abc.MetaPathFinder):
    """Hands ``detectron2.export`` the loader above; every other import goes on as usual."""

    def find_spec(self, name, path, target=None):
        if name != "detectron2.export":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ExportWithoutCaffe2Loader(spec.loader)
        return spec


def apply() -> None:
    """Install the stand-ins this detectron2 needs. Idempotent."""
    _patch_pillow()
    # detectron2 scripts a few helpers at import time; torch >= 2.9 warns about each of them
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script(_method)?` is deprecated",
                            category=FutureWarning)
    if not any(isinstance(finder, _ExportWithoutCaffe2Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ExportWithoutCaffe2Finder())
    if not HAS_D2_EXTENSION and "detectron2._C" not in sys.modules:
        sys.modules["detectron2._C"] = _make_extension_stand_in()
        d2 = sys.modules.get("detectron2")
        if d2 is not None:
            d2._C = sys.modules["detectron2._C"]  # type: ignore[attr-defined]


apply()
