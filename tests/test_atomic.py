"""``atomic_write``: the new bytes or the old, never a part; fsynced when asked (a checkpoint, a
site's state file), not when the file is rewritten rather than resumed from (the run's JSON)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedflow import _atomic
from fedflow._atomic import atomic_write, temporary_name


@pytest.mark.parametrize(
    ("options", "synced"),
    [({}, ["file"]), ({"sync_folder": True}, ["file", "folder"]), ({"sync": False}, [])],
)
def test_what_is_fsynced(tmp_path: Path, monkeypatch, options, synced) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append("folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(_atomic.os, "fsync", spy)
    atomic_write(target, b"new", **options)
    assert target.read_bytes() == b"new"
    assert not temporary_name(target).exists()
    assert seen == synced
