"""Writing files so that a reader never sees half of one and a failure leaves the old one intact."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

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


def ensure_generated(manifest_path: PathLike, manifest: Any, generate: Callable[[], None], *,
                     force: bool = False, is_complete: Optional[Callable[[], bool]] = None) -> bool:
    """Run ``generate()`` unless ``manifest_path`` already holds ``manifest`` (compared as JSON)
    and ``is_complete()``, if given, agrees. Returns whether it ran.

    The old manifest is removed first and the new one written last, atomically, so an
    interrupted generation leaves no manifest and the next call generates again.
    """
    path = Path(manifest_path)
    try:
        current = json.loads(path.read_text()) == json.loads(json.dumps(manifest))
    except (OSError, ValueError):
        current = False
    if current and not force and (is_complete is None or is_complete()):
        return False
    path.unlink(missing_ok=True)
    generate()
    write_json_atomic(path, manifest, separators=(",", ":"))
    return True
