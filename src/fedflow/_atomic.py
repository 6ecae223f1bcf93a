"""Writing a file whole or not at all: the one way fedflow replaces a file, so that a reader or a
killed run finds the previous file or the new one, never a part (training checkpoints and models,
a site's state files, the run directory's JSON, reports, a site's configuration)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """The temporary file ``atomic_write`` writes ``path`` through (left behind by a killed run)."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: Path, data: bytes, *, sync: bool = True, sync_folder: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: into a temporary file in the same folder, fsynced
    (``sync``; files rewritten rather than resumed from skip it), then renamed over ``path``, so
    a process killed midway leaves the previous file or the new one, never a part.
    ``sync_folder``: also fsync the folder, so the rename itself is on disk when this returns (a
    power loss keeps the new file)."""
    tmp = temporary_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_folder:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
