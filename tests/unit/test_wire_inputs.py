"""Every malformed input to the wire format becomes a typed, per-item error.

Decoding checks each dimension, the element count and BYTES payloads against
the limits before allocating; ``Tensor.to_numpy`` raises only typed errors;
encoding refuses values the format cannot hold.
"""

from __future__ import annotations

import math
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import wire
from fleet.contract import ItemError, Priority, Reply, Request, Timings
from fleet.errors import DecodeError, FleetError, InvalidArgument, LimitExceeded
from fleet.tensor import DataType, Tensor

pytestmark = pytest.mark.unit

SMALL = wire.Limits(max_message_bytes=1 << 16, max_elements=1 << 10, max_items=16)


def _request(rid: str, inputs: tuple[Tensor, ...] | None = None) -> Request:
    return Request(
        id=rid,
        model="digits",
        inputs=inputs or (Tensor.from_numpy("input", np.ones((1, 4), np.float32)),),
        deadline=2e9,
    )


def _raw_tensor(datatype: DataType, shape: tuple[int, ...], data: bytes) -> Tensor:
    return Tensor(name="x", datatype=datatype, shape=shape, data=data)


def _decode_one_between_good_neighbours(bad: Tensor) -> ItemError:
    data = wire.encode_requests([_request("a"), _request("bad", (bad,)), _request("c")], "inbox")
    items = wire.decode_requests(data).items
    assert isinstance(items[0], Request) and isinstance(items[2], Request)
    assert items[0].inputs[0].to_numpy().shape == (1, 4)
    assert isinstance(items[1], ItemError) and items[1].id == "bad"
    return items[1]


def test_zero_element_shape_with_a_huge_dimension_fails_only_its_item() -> None:
    err = _decode_one_between_good_neighbours(_raw_tensor(DataType.FP32, (0, 2**40), b""))
    assert isinstance(err.error, LimitExceeded) and "dimension" in err.error.message


def test_bytes_tensor_shorter_than_its_element_count_fails_only_its_item() -> None:
    err = _decode_one_between_good_neighbours(_raw_tensor(DataType.BYTES, (3,), b"\x00" * 8))
    assert isinstance(err.error, DecodeError)


def test_bytes_tensor_whose_lengths_run_past_its_data_fails_only_its_item() -> None:
    bad = _raw_tensor(DataType.BYTES, (1,), struct.pack("<I", 100) + b"abc")
    err = _decode_one_between_good_neighbours(bad)
    assert isinstance(err.error, DecodeError)


def test_tiny_bytes_item_claiming_many_elements_allocates_nothing_large() -> None:
    bad = _raw_tensor(DataType.BYTES, (1 << 27,), b"")
    data = wire.encode_requests([_request("bad", (bad,))], "inbox")
    tracemalloc.start()
    try:
        (item,) = wire.decode_requests(data).items
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(item, ItemError) and item.id == "bad"
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        pytest.param(DataType.FP32, (0, 2**64 - 1), b"", id="zero-elements-huge-dim"),
        pytest.param(DataType.FP32, (-1, -4), b"\x00" * 16, id="negative-dims"),
        pytest.param(DataType.BYTES, (3,), b"\x00" * 8, id="bytes-short-of-count"),
        pytest.param(DataType.BYTES, (1 << 40,), b"", id="bytes-huge-count"),
        pytest.param(DataType.BYTES, (1,), struct.pack("<I", 9) + b"ab", id="bytes-overrun"),
        pytest.param(DataType.BYTES, (1,), struct.pack("<I", 0) + b"ab", id="bytes-trailing"),
        pytest.param(DataType.INT64, (2**62, 4), b"", id="overflowing-product"),
    ],
)
def test_to_numpy_raises_only_typed_errors(
    datatype: DataType, shape: tuple[int, ...], data: bytes
) -> None:
    with pytest.raises(InvalidArgument):
        _raw_tensor(datatype, shape, data).to_numpy()


def test_int_parameter_outside_64_bits_is_invalid_argument() -> None:
    for value in (2**63, -(2**63) - 1):
        req = Request(id="a", model="m", inputs=(), deadline=1.0, parameters={"n": value})
        with pytest.raises(InvalidArgument, match="64-bit"):
            wire.encode_request_body(req)
    ok = Request(id="a", model="m", inputs=(), deadline=1.0, parameters={"n": 2**63 - 1})
    (got,) = wire.decode_requests(wire.encode_requests([ok], "x")).items
    assert isinstance(got, Request) and got.parameters == {"n": 2**63 - 1}


def test_unknown_priority_number_is_invalid_argument() -> None:
    assert Priority.parse(1) is Priority.BATCH
    with pytest.raises(InvalidArgument, match="priority"):
        Priority.parse(2)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.array([1, 2, 3], dtype=object), id="ints"),
        pytest.param(np.array([b"a", None], dtype=object), id="none"),
        pytest.param(np.array([b"a", 1.5], dtype=object), id="float"),
    ],
)
def test_object_array_of_non_bytes_is_invalid_argument(array: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match="BYTES"):
        Tensor.from_numpy("x", array)


def test_encoding_a_tensor_with_an_impossible_shape_is_invalid_argument() -> None:
    bad = _raw_tensor(DataType.FP32, (-1,), b"")
    with pytest.raises(InvalidArgument):
        wire.encode_request_body(_request("a", (bad,)))


def test_decoded_nan_deadline_counts_as_expired() -> None:
    req = Request(id="a", model="m", inputs=(), deadline=math.nan)
    (got,) = wire.decode_requests(wire.encode_requests([req], "x")).items
    assert isinstance(got, Request)
    assert got.expired(0.0)


# ----------------------------------------------------------------- fuzzing


def _exercise(blob: bytes, limits: wire.Limits) -> None:
    """Decode and convert everything; only typed errors may come out."""
    try:
        frame = wire.decode(blob, limits)
    except FleetError:
        return
    for item in frame.items:
        if isinstance(item, ItemError):
            assert isinstance(item.error, FleetError)
            continue
        tensors = item.inputs if isinstance(item, Request) else item.outputs
        for t in tensors:
            try:
                arr = t.to_numpy()
            except InvalidArgument:
                continue
            assert arr.size <= limits.max_elements


def _bounded(blob: bytes, limits: wire.Limits) -> None:
    tracemalloc.start()
    t0 = time.process_time()
    try:
        _exercise(blob, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the data itself plus object arrays of at most max_elements entries
    assert peak < 4 * len(blob) + 64 * limits.max_elements + (1 << 20)
    assert time.process_time() - t0 < 5.0


def _valid_frame(kind: str) -> bytes:
    b = Tensor.from_numpy("b", np.array([b"abc", b"", "\u00e9".encode()], dtype=object))
    f = Tensor.from_numpy("f", np.ones((2, 3), np.float32))
    if kind == "requests":
        return wire.encode_requests([_request("a", (b, f)), _request("b")], "inbox")
    return wire.encode_replies([Reply(id="a", model="m", outputs=(b, f))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1024))
def test_arbitrary_bytes_raise_only_fleet_errors_within_the_limits(data: bytes) -> None:
    _bounded(data, SMALL)
    _bounded(wire.MAGIC + bytes([wire.VERSION]) + data, SMALL)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["requests", "replies"]), st.data())
def test_mutated_frames_raise_only_fleet_errors_within_the_limits(
    kind: str, data: st.DataObject
) -> None:
    frame = bytearray(_valid_frame(kind))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        width = data.draw(st.sampled_from([1, 2, 4, 8]))
        value = data.draw(st.integers(0, 2 ** (8 * width) - 1))
        frame[pos : pos + width] = value.to_bytes(width, "little")[: len(frame) - pos]
    cut = data.draw(st.integers(0, len(frame)))
    _bounded(bytes(frame), SMALL)
    _bounded(bytes(frame[:cut]), SMALL)


def test_numpy_string_arrays_are_bytes_tensors() -> None:
    t = Tensor.from_numpy("s", np.array(["ab", "\u00e9"]))
    assert t.datatype is DataType.BYTES
    assert t.to_numpy().tolist() == [b"ab", "\u00e9".encode()]


def test_reply_timings_beyond_f32_are_clamped_not_crashing() -> None:
    rep = Reply(id="a", model="m", timings=Timings(queue_ms=1e300, inference_ms=math.inf))
    (got,) = wire.decode_replies(wire.encode_replies([rep])).items
    assert isinstance(got, Reply) and got.timings.inference_ms == math.inf
    assert got.timings.queue_ms > 1e38
