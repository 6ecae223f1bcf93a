"""Length-prefixed framing, sans I/O.

A frame is a 4-byte big-endian payload length followed by the payload. ``FrameDecoder`` is fed
bytes as they arrive and hands out whole payloads; it never reads or writes anything itself.
"""

from __future__ import annotations

import struct

from fedflow.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "FrameDecoder",
    "encode_frame",
    "frame_header",
    "parse_header",
]

HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 256 * 1024 * 1024  # 256 MiB: far above any aggregate, far below memory
_HEADER = struct.Struct(">I")


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return ``payload`` with its length prefix; raise LocalProtocolError when oversized."""
    return frame_header(payload, max_frame) + payload


def frame_header(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return the length prefix of ``payload``'s frame, to write before it (rather than joined
    with it: a copy of megabytes); raise LocalProtocolError when oversized."""
    if len(payload) > max_frame:
        raise LocalProtocolError(
            f"message of {len(payload)} bytes exceeds the maximum frame size of {max_frame} bytes"
        )
    return _HEADER.pack(len(payload))


def parse_header(header: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Return the payload length announced by a 4-byte header; refuse oversized frames."""
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise RemoteProtocolError(
            f"peer announced a frame of {length} bytes, above the maximum of {max_frame} bytes"
        )
    return length


class FrameDecoder:
    """Turn a byte stream into payloads: ``feed(data)`` then ``next_frame()`` until None."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next whole payload, or None when more data is needed."""
        if self._need is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            self._need = parse_header(bytes(self._buffer[:HEADER_SIZE]), self.max_frame)
            del self._buffer[:HEADER_SIZE]
        if len(self._buffer) < self._need:
            return None
        payload = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._need = None
        return payload

    def close(self) -> None:
        """Declare end of stream; raise RemoteProtocolError if a frame was cut short."""
        if self._need is not None or self._buffer:
            have = len(self._buffer)
            want = self._need if self._need is not None else HEADER_SIZE
            raise RemoteProtocolError(f"stream ended inside a frame ({have} of {want} bytes)")
