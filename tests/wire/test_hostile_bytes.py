"""Whatever bytes arrive, the codec answers with a message or a RemoteProtocolError, and the
agent's loop with a Failure frame or a clean exit — never a traceback."""

from __future__ import annotations

import io
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedflow.errors import RemoteProtocolError
from fedflow.node.agent import NodeAgent, serve
from fedflow.wire import FrameDecoder, Message, MessageCodec, encode_frame
from fedflow.wire.arrays import ARRAY_EXT

codec = MessageCodec()

_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_TAGS = ["hello", "setup", "prepare", "task", "finish", "reply", "nonsense"]
_json_like = st.recursive(
    st.none() | st.booleans() | _ints | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _array_ext(dtype: bytes, shape: tuple[int, ...], body: bytes) -> msgspec.msgpack.Ext:
    head = (
        struct.pack("<B", len(dtype)) + dtype + struct.pack(f"<B{len(shape)}Q", len(shape), *shape)
    )
    return msgspec.msgpack.Ext(ARRAY_EXT, head + body)


_arrays = st.builds(
    _array_ext,
    st.sampled_from([b"<f8", b"<U0", b"|V8", b"|O", b"<i4", b"xx", b""]),
    st.lists(st.integers(0, 2**64 - 1), max_size=3).map(tuple),
    st.binary(max_size=32),
)
_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(_TAGS)},
    optional={
        "round": _ints | st.text(max_size=3),
        "phase": st.text(max_size=8),
        "payload": st.dictionaries(st.text(max_size=4), _json_like | _arrays, max_size=3),
        "data": st.lists(st.text(max_size=10), max_size=2),
        "app": st.text(max_size=12),
        "params": st.dictionaries(st.text(max_size=4), _json_like, max_size=3),
        "columns": st.dictionaries(st.text(max_size=4), st.text(max_size=8), max_size=3),
        "min_count": _ints,
    },
)


def _decode(payload: bytes) -> Message | None:
    try:
        return codec.decode(payload)
    except RemoteProtocolError:
        return None


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_random_bytes_decode_or_fail_cleanly(payload: bytes) -> None:
    _decode(payload)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_messages)
def test_structured_garbage_decodes_or_fails_cleanly(message: dict) -> None:
    _decode(msgspec.msgpack.encode(message))


@pytest.mark.parametrize("depth", [10, 1_000, 100_000])
def test_deeply_nested_arrays_fail_cleanly(depth: int) -> None:
    head = msgspec.msgpack.encode({"type": "task", "round": 1, "phase": "x"})
    payload = b"\x84" + head[1:] + b"\xa7payload\x81\xa1a" + b"\x91" * depth + b"\xc0"
    message = _decode(payload)
    assert message is None or type(message).__name__ == "Task"


@pytest.mark.parametrize(
    "dtype, shape",
    [(b"<U0", (10**18, 10**18)), (b"<f8", (2**63, 2**63)), (b"<f8", (2**64 - 1,)), (b"|V8", (1,))],
)
def test_hostile_array_headers_are_refused(dtype: bytes, shape: tuple[int, ...]) -> None:
    message = {
        "type": "task",
        "round": 1,
        "phase": "x",
        "payload": {"a": _array_ext(dtype, shape, b"")},
    }
    with pytest.raises(RemoteProtocolError):
        codec.decode(msgspec.msgpack.encode(message))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_messages.map(msgspec.msgpack.encode) | st.binary(max_size=64), max_size=6))
def test_the_agent_loop_answers_every_frame_or_exits_cleanly(frames: list[bytes]) -> None:
    stdin = io.BytesIO(b"".join(encode_frame(f) for f in frames))
    stdout = io.BytesIO()
    status = serve(NodeAgent("s"), stdin, stdout)
    assert status in (0, 1)
    decoder = FrameDecoder()
    decoder.feed(stdout.getvalue())
    answered = 0
    while (payload := decoder.next_frame()) is not None:
        assert codec.decode(payload) is not None
        answered += 1
    assert answered <= len(frames)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_the_agent_loop_survives_a_raw_byte_stream(raw: bytes) -> None:
    assert serve(NodeAgent("s"), io.BytesIO(raw), io.BytesIO()) in (0, 1)
