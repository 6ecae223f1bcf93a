"""Writing a file whole or not at all: the one way fedflow replaces a file that a killed run must
find intact (training checkpoints and models, a site's state files)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, *, sync_folder: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: into a temporary file in the same folder, fsynced,
    then renamed over ``path``, so a process killed midway leaves the previous file or the new
    one, never a part. ``sync_folder``: also fsync the folder, so the rename itself is on disk
    when this returns (a power loss keeps the new file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_folder:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
