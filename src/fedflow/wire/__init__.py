"""The wire protocol: typed messages, length-prefixed frames, arrays as dtype/shape/bytes.

Sans I/O: nothing here reads or writes; the node agent and connectors are thin loops around it.
"""

from __future__ import annotations

from fedflow.wire.arrays import decode_array, encode_array
from fedflow.wire.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    FrameDecoder,
    encode_frame,
    parse_header,
)
from fedflow.wire.messages import (
    PROTOCOL_VERSION,
    Bye,
    Column,
    Failure,
    FileInfo,
    Finish,
    Hello,
    Message,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Reply,
    Setup,
    Task,
    Welcome,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "Bye",
    "Column",
    "Failure",
    "FileInfo",
    "Finish",
    "FrameDecoder",
    "Hello",
    "Message",
    "MessageCodec",
    "Prepare",
    "Prepared",
    "Ready",
    "Reply",
    "Setup",
    "Task",
    "Welcome",
    "decode_array",
    "encode_array",
    "encode_frame",
    "parse_header",
]
