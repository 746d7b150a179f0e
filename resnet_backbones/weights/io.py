"""Reading weight files safely, and writing files atomically.

Nothing here unpickles arbitrary objects unless the caller asks for it: ``.pth`` files go
through ``torch.load(weights_only=True)``, ``.safetensors`` through safetensors, and ``.pkl``
files (Detectron2 / MSRA model zoo) through an unpickler that only rebuilds NumPy arrays and
plain containers.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..fileio import atomic_output  # noqa: F401  (re-exported)

PathLike = Union[str, os.PathLike]


class WeightsError(ValueError):
    """A weights file that cannot be read or converted; the message names the file and keys."""


# What a model-zoo .pkl may reference: NumPy's array reconstruction and scalar types.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_PICKLE_GLOBALS or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_weights_file(path: PathLike, *, allow_unsafe_pickle: bool = False) -> Any:
    """The object stored in ``path`` (usually a dict), loaded without running arbitrary code.

    ``allow_unsafe_pickle=True`` falls back to full unpickling for files that hold other
    objects; only use it for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    data = path.read_bytes()
    if path.suffix == ".pkl":
        try:
            return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if allow_unsafe_pickle:
                return pickle.loads(data, encoding="latin1")
            raise WeightsError(
                f"{path}: holds objects other than arrays ({e}); if you trust the file, "
                "load it with allow_unsafe_pickle / --allow-unsafe-pickle"
            ) from None
        except Exception as e:
            raise WeightsError(f"{path}: not a readable pickle file ({e})") from None
    try:
        # training scripts (DINO, timm's train.py) store their argparse.Namespace beside the weights:
        # a plain attribute holder, safe to rebuild
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if allow_unsafe_pickle:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        raise WeightsError(
            f"{path}: holds objects other than tensors and plain containers, refused by "
            f"torch.load(weights_only=True) ({str(e).splitlines()[0]}); if you trust the file, "
            "load it with allow_unsafe_pickle / --allow-unsafe-pickle"
        ) from None
    except Exception as e:
        raise WeightsError(f"{path}: not a readable PyTorch file ({e})") from None


def to_numpy_state_dict(state_dict: dict) -> dict:
    return {k: v.detach().cpu().numpy() if torch.is_tensor(v) else v for k, v in state_dict.items()}


def to_tensor_state_dict(state_dict: dict) -> dict:
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state_dict.items()}
