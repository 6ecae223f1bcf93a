"""The wire core in memory: frames and messages round-trip; broken input raises, blaming the peer."""

from __future__ import annotations

import struct

import hypothesis.extra.numpy as hnp
import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedflow.errors import LocalProtocolError, RemoteProtocolError
from fedflow.wire import (
    Failure,
    FrameDecoder,
    Hello,
    MessageCodec,
    Ready,
    Reply,
    Task,
    decode_array,
    encode_array,
    encode_frame,
)
from fedflow.wire.arrays import ARRAY_EXT
from fedflow.wire.messages import Column, FileInfo

codec = MessageCodec()


def roundtrip(message):
    decoder = FrameDecoder()
    decoder.feed(encode_frame(codec.encode(message)))
    payload = decoder.next_frame()
    assert decoder.next_frame() is None
    decoder.close()
    return codec.decode(payload)


def test_messages_round_trip_with_nested_arrays() -> None:
    payload = {
        "xtx": np.arange(9.0).reshape(3, 3),
        "counts": np.array([1, 2, 3], dtype=np.int64),
        "mask": np.array([True, False]),
        "levels": np.array(["a", "bb"]),
        "nested": {"list": [1, 2.5, "x", None], "scalar": np.float64(2.5), "n": np.int32(7)},
        "empty": np.empty((0, 4)),
    }
    back = roundtrip(Task(round=3, phase="p", payload=payload))
    assert isinstance(back, Task) and back.round == 3
    np.testing.assert_array_equal(back.payload["xtx"], payload["xtx"])
    assert back.payload["xtx"].dtype == np.float64 and back.payload["xtx"].shape == (3, 3)
    assert back.payload["counts"].dtype == np.int64
    np.testing.assert_array_equal(back.payload["mask"], payload["mask"])
    assert list(back.payload["levels"]) == ["a", "bb"]
    assert back.payload["nested"] == {"list": [1, 2.5, "x", None], "scalar": 2.5, "n": 7}
    assert back.payload["empty"].shape == (0, 4)


def test_non_contiguous_and_big_endian_arrays_keep_values() -> None:
    a = np.arange(20.0).reshape(4, 5)[:, ::2]
    b = np.arange(5, dtype=">f8")
    back = roundtrip(Reply(round=1, payload={"a": a, "b": b}))
    np.testing.assert_array_equal(back.payload["a"], a)
    np.testing.assert_array_equal(back.payload["b"], b)


def _documented_body(array: np.ndarray) -> bytes:
    """The extension body as fedflow/wire/arrays.py documents it, built independently."""
    dtype = array.dtype.str.encode("ascii")
    return (
        struct.pack("<B", len(dtype))
        + dtype
        + struct.pack(f"<B{array.ndim}Q", array.ndim, *array.shape)
        + np.ascontiguousarray(array).tobytes()
    )


@given(
    hnp.arrays(
        dtype=st.sampled_from(["<f8", ">f8", "<f4", "<i8", ">i4", "|u1", "|b1", "<U3"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    ),
    st.booleans(),
)
def test_an_array_body_is_its_header_then_its_c_ordered_bytes(array, transposed) -> None:
    """The documented layout, byte for byte, whatever the array's memory layout (a transposed
    view is not C-contiguous) or byte order."""
    if transposed:
        array = array.T
    assert bytes(encode_array(array)) == _documented_body(array)


@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<i8"])
def test_a_large_array_body_is_its_header_then_its_c_ordered_bytes(dtype) -> None:
    """Arrays of 64 KiB and more are copied once into their body: the same layout."""
    base = np.arange(2 * 300 * 70, dtype=dtype).reshape(2, 300, 70)
    for array in (base, base.transpose(2, 0, 1), base[:, ::2]):
        assert array.nbytes >= 1 << 16
        assert bytes(encode_array(array)) == _documented_body(array)
        np.testing.assert_array_equal(decode_array(encode_array(array)), array)


def test_handshake_messages_round_trip() -> None:
    ready = Ready(
        rows=4, columns=[Column("x", "float", 1)], files=[FileInfo("a.csv", "ab" * 32, 10, 4)]
    )
    assert roundtrip(ready) == ready
    hello = Hello(protocol=1, version="0.1.0", site="berlin")
    assert roundtrip(hello) == hello


@given(st.lists(st.floats(allow_nan=False), max_size=50), st.integers(0, 3))
def test_float_arrays_round_trip_bit_exact(values, ndim_extra) -> None:
    array = np.array(values, dtype=np.float64).reshape((-1,) + (1,) * ndim_extra)
    back = decode_array(encode_array(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_frames_split_anywhere_reassemble() -> None:
    frames = b"".join(
        encode_frame(codec.encode(Hello(protocol=1, version="v", site=str(i)))) for i in range(3)
    )
    decoder = FrameDecoder()
    got = []
    for byte in frames:
        decoder.feed(bytes([byte]))
        while (payload := decoder.next_frame()) is not None:
            got.append(codec.decode(payload).site)
    assert got == ["0", "1", "2"]
    decoder.close()


def test_truncated_frame_is_the_peers_fault() -> None:
    frame = encode_frame(b"x" * 100)
    decoder = FrameDecoder()
    decoder.feed(frame[:50])
    assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
        decoder.close()


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(LocalProtocolError, match="exceeds the maximum frame size"):
        encode_frame(b"x" * 101, max_frame=100)
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(struct.pack(">I", 2**31) + b"rest")
    with pytest.raises(RemoteProtocolError, match="above the maximum"):
        decoder.next_frame()


def test_corrupt_message_bytes_raise_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="corrupt message"):
        codec.decode(b"\xc1garbage")
    unknown = msgspec.msgpack.encode({"type": "launch-missiles"})
    with pytest.raises(RemoteProtocolError):
        codec.decode(unknown)
    extra = msgspec.msgpack.encode(
        {"type": "hello", "protocol": 1, "version": "x", "site": "s", "evil": 1}
    )
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        codec.decode(extra)


def test_object_arrays_never_travel() -> None:
    with pytest.raises(LocalProtocolError, match="dtype object"):
        codec.encode(Task(round=1, phase="p", payload={"x": np.array([{"a": 1}], dtype=object)}))


def test_hostile_array_bodies_are_refused() -> None:
    good = encode_array(np.arange(4.0))
    with pytest.raises(RemoteProtocolError, match="needs 32 bytes"):
        decode_array(good[:-1])
    obj = struct.pack("<B", 3) + b"|O8" + struct.pack("<BQ", 1, 1) + b"\0" * 8
    with pytest.raises(RemoteProtocolError, match="refusing array"):
        decode_array(obj)
    with pytest.raises(RemoteProtocolError, match="corrupt array header"):
        decode_array(b"\x05ab")
    hostile = msgspec.msgpack.encode(
        {"type": "task", "round": 1, "payload": {"x": msgspec.msgpack.Ext(ARRAY_EXT + 7, b"")}}
    )
    with pytest.raises(RemoteProtocolError, match="unknown msgpack extension"):
        codec.decode(hostile)


def test_unencodable_values_are_our_fault() -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(Task(round=1, phase="p", payload={"x": object()}))


def test_failure_carries_file_and_column() -> None:
    failure = Failure(kind="data", message="bad", file="a.csv", column="age")
    assert roundtrip(failure) == failure
