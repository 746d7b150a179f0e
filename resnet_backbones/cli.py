"""Shared command-line plumbing: one clear message and a non-zero exit for bad input."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Tuple, Type

#: Errors that mean "bad input": shown as one line, no traceback.
USER_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)

#: Set (to anything but "" or "0") to see tracebacks instead of the one-line errors.
DEBUG_VARIABLE = "RESNET_BACKBONES_DEBUG"


def show_tracebacks() -> bool:
    return os.getenv(DEBUG_VARIABLE, "") not in ("", "0")


def exits_cleanly(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main`` so that a bad input prints ``error: ...`` and returns 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if show_tracebacks():
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {message}", file=sys.stderr)
            return 2

    return wrapper
