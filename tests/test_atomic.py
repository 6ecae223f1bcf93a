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


def test_pieces_are_written_whole_and_in_order_through_short_writes(
    tmp_path: Path, monkeypatch
) -> None:
    """Pieces are gathered into the file in order; a writev that writes less than asked (a
    signal, a full pipe, a slow disk) is resumed where it stopped, mid-piece included."""
    target = tmp_path / "pieces.bin"
    pieces = [b"header", b"", bytes(range(256)) * 3, b"tail"]
    real = os.writev
    calls: list[int] = []

    def short(fd: int, buffers) -> int:
        calls.append(len(buffers))
        first = bytes(buffers[0])
        return real(fd, [first[: max(1, len(first) // 2)]])  # at most half of one piece

    monkeypatch.setattr(_atomic.os, "writev", short)
    atomic_write(target, pieces)
    assert target.read_bytes() == b"".join(pieces)
    assert len(calls) > len(pieces)
    monkeypatch.setattr(_atomic.os, "writev", real)
    atomic_write(target, (p for p in [b"a", b"bc"]))  # any iterable of pieces
    assert target.read_bytes() == b"abc"
