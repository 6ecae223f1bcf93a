"""Writing a file whole or not at all: the one way fedflow replaces a file, so that a reader or a
killed run finds the previous file or the new one, never a part (training checkpoints and models,
a site's state files, the run directory's JSON, reports, a site's configuration)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """The temporary file ``atomic_write`` writes ``path`` through (left behind by a killed run)."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes],
    *,
    sync: bool = True,
    sync_folder: bool = False,
) -> None:
    """Write ``data`` (bytes, or pieces written one after the other) to ``path`` atomically:
    into a temporary file in the same folder, fsynced (``sync``; files rewritten rather than
    resumed from skip it), then renamed over ``path``, so a process killed midway leaves the
    previous file or the new one, never a part. ``sync_folder``: also fsync the folder, so the
    rename itself is on disk when this returns (a power loss keeps the new file)."""
    tmp = temporary_name(path)
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _write_all(fd, pieces)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_folder:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, pieces: list[Any]) -> None:
    """Write every byte of ``pieces`` to ``fd`` in order, gathered (``os.writev``) rather than
    joined, resuming after a short write."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        while done and views:
            if done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][done:]
                done = 0


_IOV_MAX = 1024
"""Pieces per ``writev`` call (Linux's IOV_MAX)."""
