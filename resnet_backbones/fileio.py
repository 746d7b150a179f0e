"""Writing files so that a reader never sees half of one and a failure leaves the old one intact."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: PathLike, mode: str = "wb", **open_kwargs) -> Iterator[Any]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds.

    The file gets the permissions a plain ``open`` would give (the umask's), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: PathLike, data: Any, **dump_kwargs) -> None:
    """``json.dump(data)`` into ``path`` through :func:`atomic_output`."""
    with atomic_output(path, "w", encoding="utf-8") as f:
        json.dump(data, f, **dump_kwargs)
        f.write("\n")
