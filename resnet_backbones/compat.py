"""Lets this package and detectron2 import and run on every detectron2 users have.

Supported: the v0.6 release (also as installed from the package index without its C++ extension)
and builds of the current main branch, with or without the extension. Nothing here changes a
complete detectron2: each patch applies only where the thing it stands in for is missing.

Import this module before anything imports detectron2 (``resnet_backbones/__init__.py`` does).
"""
from __future__ import annotations

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


def apply() -> None:
    """Install the stand-ins this detectron2 needs. Idempotent."""
    _patch_pillow()
    # detectron2 scripts a few helpers at import time; torch >= 2.9 warns about each of them
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script(_method)?` is deprecated",
                            category=FutureWarning)
    if not HAS_D2_EXTENSION and "detectron2._C" not in sys.modules:
        sys.modules["detectron2._C"] = _make_extension_stand_in()
        d2 = sys.modules.get("detectron2")
        if d2 is not None:
            d2._C = sys.modules["detectron2._C"]  # type: ignore[attr-defined]


apply()
