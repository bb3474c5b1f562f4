"""The binary encoding: round trips, limits, item isolation, and fuzzing."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import wire
from fleet.contract import ErrorInfo, ItemError, Priority, Reply, Request, Timings
from fleet.errors import (
    DecodeError,
    ErrorCode,
    FleetError,
    InvalidArgument,
    LimitExceeded,
    Overloaded,
    UnsupportedVersion,
)
from fleet.tensor import DataType, Tensor, split_rows

pytestmark = pytest.mark.unit

ARRAYS = {
    DataType.BOOL: np.array([[True, False, True]]),
    DataType.UINT8: np.arange(6, dtype=np.uint8).reshape(2, 3),
    DataType.INT32: np.array([[-1, 2**31 - 1]], dtype=np.int32),
    DataType.INT64: np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    DataType.FP16: np.array([[0.5, -2.0]], dtype=np.float16),
    DataType.FP32: np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    DataType.FP64: np.array([[np.pi]], dtype=np.float64),
    DataType.BYTES: np.array([[b"abc", b""], [b"\x00\xff", "utf-8 \u00e9".encode()]], dtype=object),
}


def _request(rid: str = "r1", **kw: object) -> Request:
    fields: dict[str, object] = {
        "id": rid,
        "model": "digits",
        "inputs": (Tensor.from_numpy("input", np.ones((1, 4), np.float32)),),
        "deadline": 2e9,
    }
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("datatype", list(ARRAYS), ids=lambda d: d.name)
def test_every_datatype_round_trips(datatype: DataType) -> None:
    arr = ARRAYS[datatype]
    req = _request(inputs=(Tensor.from_numpy("x", arr),))
    frame = wire.decode_requests(wire.encode_requests([req], "inbox"))
    (got,) = frame.items
    assert isinstance(got, Request)
    out = got.inputs[0].to_numpy()
    assert got.inputs[0].datatype is datatype
    assert out.shape == arr.shape
    if datatype is DataType.BYTES:
        assert out.tolist() == arr.tolist()
    else:
        np.testing.assert_array_equal(out, arr)


def test_request_fields_round_trip() -> None:
    req = _request(
        version="3",
        priority=Priority.BATCH,
        parameters={"flag": True, "n": -7, "x": 0.25, "s": "hello"},
        sent_at=1234.5,
    )
    frame = wire.decode_requests(wire.encode_requests([req], "inbox.7"))
    assert frame.reply_to == "inbox.7"
    (got,) = frame.items
    assert isinstance(got, Request)
    assert (got.id, got.model, got.version, got.priority) == ("r1", "digits", "3", Priority.BATCH)
    assert got.parameters == {"flag": True, "n": -7, "x": 0.25, "s": "hello"}
    assert (got.deadline, got.sent_at) == (2e9, 1234.5)


def test_replies_round_trip_with_outputs_and_errors() -> None:
    ok = Reply(
        id="a",
        model="m",
        version="1",
        outputs=(Tensor.from_numpy("y", np.arange(3, dtype=np.int64)),),
        timings=Timings(queue_ms=1.5, inference_ms=2.5, batch_size=8, worker_id="w"),
    )
    bad = Reply(id="b", model="m", error=ErrorInfo.of(Overloaded("full")))
    frame = wire.decode_replies(wire.encode_replies([ok, bad]))
    got_ok, got_bad = frame.items
    assert isinstance(got_ok, Reply) and isinstance(got_bad, Reply)
    np.testing.assert_array_equal(got_ok.arrays()["y"], [0, 1, 2])
    assert got_ok.timings == ok.timings
    assert got_bad.error == ErrorInfo(code=ErrorCode.OVERLOADED, message="full", retriable=True)
    with pytest.raises(Overloaded, match="full"):
        got_bad.arrays()


@pytest.mark.parametrize(
    "names", [("y", "y"), ("y", "z", "y"), ("y", "z"), ("y", "z", "w")], ids="-".join
)
def test_two_outputs_of_one_name_fail_only_their_reply(names: tuple[str, ...]) -> None:
    outputs = tuple(Tensor.from_numpy(n, np.arange(2, dtype=np.int64)) for n in names)
    replies = [Reply(id="a", model="m", outputs=outputs), Reply(id="b", model="m")]
    first, second = wire.decode_replies(wire.encode_replies(replies)).items
    if len(set(names)) < len(names):
        assert isinstance(first, ItemError) and first.id == "a"
        assert "share a name" in first.error.message
    else:
        assert isinstance(first, Reply) and [t.name for t in first.outputs] == list(names)
    assert isinstance(second, Reply) and second.id == "b"


def test_many_requests_share_one_frame_and_a_bad_item_fails_alone() -> None:
    frame = bytearray(wire.encode_requests([_request("a"), _request("b"), _request("c")], "x"))
    # corrupt the datatype byte of item "b" only
    pos = frame.index(b"\x01\x00b") + 3  # id "b": u16 length 1, then "b"
    pos = frame.index(b"input", pos) + len(b"input")
    frame[pos] = 99
    items = wire.decode_requests(bytes(frame)).items
    assert [type(i).__name__ for i in items] == ["Request", "ItemError", "Request"]
    bad = items[1]
    assert isinstance(bad, ItemError) and bad.id == "b"
    assert "datatype" in bad.error.message


def test_unknown_schema_version_is_a_typed_error() -> None:
    data = bytearray(wire.encode_requests([_request()], "x"))
    data[4] = 99
    with pytest.raises(UnsupportedVersion, match="99"):
        wire.decode(bytes(data))


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        pytest.param(wire.Limits(max_message_bytes=100), "message of", id="size"),
        pytest.param(wire.Limits(max_items=1), "items", id="items"),
    ],
)
def test_frame_limits(limits: wire.Limits, match: str) -> None:
    data = wire.encode_requests([_request("a"), _request("b")], "x")
    with pytest.raises(LimitExceeded, match=match):
        wire.decode(data, limits)


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        pytest.param(wire.Limits(max_rank=1), "rank", id="rank"),
        pytest.param(wire.Limits(max_elements=3), "elements", id="elements"),
        pytest.param(wire.Limits(max_tensors=0), "tensors", id="tensors"),
    ],
)
def test_item_limits_fail_only_the_item(limits: wire.Limits, match: str) -> None:
    (item,) = wire.decode(wire.encode_requests([_request()], "x"), limits).items
    assert isinstance(item, ItemError) and isinstance(item.error, LimitExceeded)
    assert match in item.error.message and item.id == "r1"


def test_huge_declared_shape_is_refused_before_allocating() -> None:
    data = bytearray(wire.encode_requests([_request()], "x"))
    dims = struct.pack("<QQ", 1, 4)
    at = data.index(dims)
    data[at : at + 16] = struct.pack("<QQ", 1 << 40, 1 << 20)
    (item,) = wire.decode(bytes(data)).items
    assert isinstance(item, ItemError) and isinstance(item.error, LimitExceeded)


def test_salvage_reads_ids_of_a_frame_over_the_size_limit() -> None:
    data = wire.encode_requests([_request("a"), _request("b")], "inbox.1")
    with pytest.raises(LimitExceeded):
        wire.decode(data, wire.Limits(max_message_bytes=64))
    assert wire.salvage_ids(data) == ("inbox.1", ["a", "b"])
    assert wire.salvage_ids(b"garbage") == ("", [])


def test_a_datatype_is_the_same_for_either_byte_order_and_asked_again() -> None:
    for _ in range(2):  # the second time from what was mapped before
        for code, datatype in (
            ("f4", DataType.FP32),
            ("i8", DataType.INT64),
            ("u2", DataType.UINT16),
        ):
            for order in ("<", ">", "="):
                assert DataType.from_numpy(np.dtype(order + code)) is datatype
        assert DataType.from_numpy(np.dtype("U3")) is DataType.BYTES
        with pytest.raises(InvalidArgument, match="no inference datatype"):
            DataType.from_numpy(np.dtype([("a", "<f4")]))
    # a big-endian array is sent little-endian
    arr = np.arange(3, dtype=">f4")
    t = Tensor.from_numpy("x", arr)
    assert t.datatype is DataType.FP32 and bytes(t.data) == np.arange(3, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype="<f4").reshape(6, 2),
        np.arange(6, dtype=">i8"),  # sent little-endian
        np.array([b"a", b"bc", b"", b"def", b"g", b"h"], dtype=object),
        np.asfortranarray(np.arange(18, dtype="<f8").reshape(6, 3)),  # not C-contiguous
    ],
    ids=["fp32", "big-endian", "bytes", "fortran"],
)
def test_rows_split_into_tensors_as_each_slice_would_be(array: np.ndarray) -> None:
    counts = [1, 2, 0, 3]
    pieces = split_rows("y", array, counts)
    offset = 0
    for n, piece in zip(counts, pieces, strict=True):
        alone = Tensor.from_numpy("y", array[offset : offset + n])
        assert (piece.name, piece.datatype, piece.shape) == (
            alone.name,
            alone.datatype,
            alone.shape,
        )
        assert bytes(piece.data) == bytes(alone.data)
        offset += n


def test_tensor_with_wrong_data_length_is_invalid() -> None:
    t = Tensor(name="x", datatype=DataType.FP32, shape=(2, 2), data=b"\x00" * 12)
    with pytest.raises(InvalidArgument, match="needs 16"):
        t.to_numpy()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_typed_errors(data: bytes) -> None:
    try:
        frame = wire.decode(data)
    except DecodeError:
        return
    for item in frame.items:
        assert isinstance(item, Request | Reply | ItemError)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_frames_only_raise_typed_errors(data: st.DataObject) -> None:
    frame = bytearray(wire.encode_requests([_request("a"), _request("b", version="2")], "inbox"))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    for blob in (bytes(frame), bytes(frame[:cut])):
        try:
            decoded = wire.decode(blob)
        except DecodeError:
            continue
        for item in decoded.items:
            if isinstance(item, ItemError):
                assert isinstance(item.error, FleetError)
            elif isinstance(item, Request):
                for t in item.inputs:
                    try:
                        t.to_numpy()
                    except InvalidArgument:
                        pass


def test_stage_times_travel_only_to_a_client_that_asked() -> None:
    tm = Timings(queue_ms=1.5, inference_ms=2.5, batch_size=8, worker_id="w", received_at=100.25)
    ok = Reply(id="a", model="m", timings=tm)
    unsent = Reply(id="b", model="m", error=ErrorInfo.of(Overloaded("full")))  # never ran
    asked = wire.encode_replies([ok, unsent], stages=True, now=100.75)
    plain = wire.encode_replies([ok, unsent])
    assert asked[4] == 2 and plain[4] == 1  # the frame versions
    got_ok, got_unsent = wire.decode_replies(asked).items
    assert isinstance(got_ok, Reply) and isinstance(got_unsent, Reply)
    assert (got_ok.timings.received_at, got_ok.timings.replied_at) == (100.25, 100.75)
    assert (got_unsent.timings.received_at, got_unsent.timings.replied_at) == (0.0, 0.0)
    old_ok, _ = wire.decode_replies(plain).items  # what a client that did not ask reads
    assert isinstance(old_ok, Reply)
    assert old_ok.timings == Timings(queue_ms=1.5, inference_ms=2.5, batch_size=8, worker_id="w")


def test_request_frame_flags_round_trip_and_old_frames_have_none() -> None:
    flagged = wire.encode_requests([_request()], "inbox", flags=wire.FLAG_STAGES)
    assert wire.decode_requests(flagged).flags == wire.FLAG_STAGES
    assert wire.decode_requests(wire.encode_requests([_request()], "inbox")).flags == 0


def test_request_tensor_data_is_not_copied_until_the_frame_is_joined() -> None:
    x = np.ones((2, 4), np.float32)
    body = wire.encode_request_body(_request(inputs=(Tensor.from_numpy("input", x),)))
    assert any(isinstance(p, memoryview) and np.shares_memory(np.asarray(p), x) for p in body)
    frame = wire.encode_requests([body], "inbox")
    x[:] = 2  # the joined frame holds its own copy
    got = wire.decode_requests(frame).items[0]
    assert isinstance(got, Request)
    np.testing.assert_array_equal(got.inputs[0].to_numpy(), np.ones((2, 4), np.float32))


def test_headers_travel_in_version_3_and_cannot_share_a_frame_without() -> None:
    traced = _request("t", headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    frame = wire.encode_requests([traced], "inbox")
    assert frame[4] == wire.HEADERS_VERSION
    got = wire.decode_requests(frame).items[0]
    assert isinstance(got, Request) and got.headers == traced.headers
    assert wire.encode_requests([_request()], "inbox")[4] == wire.VERSION
    with pytest.raises(InvalidArgument, match="share a frame"):
        wire.encode_requests([traced, _request()], "inbox")


def test_too_many_headers_fail_only_their_item() -> None:
    many = _request("m", headers={f"h{i}": "v" for i in range(20)})
    frame = wire.decode_requests(wire.encode_requests([many], "inbox"))
    (item,) = frame.items
    assert isinstance(item, ItemError) and item.id == "m"
    assert isinstance(item.error, LimitExceeded)


def test_a_frame_in_a_view_of_another_format_decodes_the_same() -> None:
    """A frame handed over as a view of, say, 16-bit units is read as bytes."""
    for rid in ("a", "ab"):  # one of the two frames is a whole number of 16-bit units
        blob = wire.encode_requests([_request(rid), _request("b", version="2")], "inbox")
        if len(blob) % 2 == 0:
            break
    view = memoryview(blob).cast("H")
    assert wire.decode(view, arrived=1.0) == wire.decode(blob, arrived=1.0)
    assert wire.salvage_ids(view) == ("inbox", [rid, "b"])


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<H", len(raw)) + raw


def test_a_request_frame_is_byte_for_byte_the_documented_grammar() -> None:
    data = np.array([[1.5, -2.0]], dtype=np.float32)
    req = _request(
        "r1",
        model="m\u00fc",
        version="3",
        inputs=(Tensor.from_numpy("x", data),),
        deadline=2e9,
        sent_at=1.5e9,
        timeout=2.5,
        priority=Priority.BATCH,
        parameters={"n": 7},
    )
    tensor = _text("x") + struct.pack("<BB2QQ", DataType.FP32, 2, 1, 2, 8) + data.tobytes()
    body = _text("r1") + _text("m\u00fc") + _text("3")
    body += struct.pack("<dddBH", 2e9, 1.5e9, 2.5, 1, 1)
    body += _text("n") + struct.pack("<Bq", 1, 7) + struct.pack("<H", 1) + tensor
    head = struct.pack("<4sBBH", wire.MAGIC, 2, wire.KIND_REQUESTS, wire.FLAG_STAGES)
    expected = head + _text("inbox") + struct.pack("<II", 1, len(body)) + body
    assert wire.encode_requests([req], "inbox", flags=wire.FLAG_STAGES) == expected


def test_a_reply_frame_is_byte_for_byte_the_documented_grammar() -> None:
    out = np.array([[3]], dtype=np.int64)
    timings = Timings(queue_ms=1.5, inference_ms=0.25, batch_size=9, worker_id="w", received_at=7.0)
    ok = Reply(
        id="a", model="m", version="1", outputs=(Tensor.from_numpy("y", out),), timings=timings
    )
    failed = Reply(id="b", model="m", error=ErrorInfo(code=4, message="no", retriable=True))
    first = _text("a") + _text("m") + _text("1") + b"\x00" + struct.pack("<ffI", 1.5, 0.25, 9)
    first += _text("w") + struct.pack("<dd", 7.0, 8.0) + struct.pack("<H", 1)
    first += _text("y") + struct.pack("<BB2QQ", DataType.INT64, 2, 1, 1, 8) + out.tobytes()
    second = _text("b") + _text("m") + _text("") + b"\x01" + struct.pack("<HB", 4, 1) + _text("no")
    second += struct.pack("<ffI", 0.0, 0.0, 0) + _text("") + struct.pack("<ddH", 0.0, 0.0, 0)
    head = struct.pack("<4sBBH", wire.MAGIC, 2, wire.KIND_REPLIES, 0) + _text("")
    items = struct.pack("<I", len(first)) + first + struct.pack("<I", len(second)) + second
    expected = head + struct.pack("<I", 2) + items
    assert wire.encode_replies([ok, failed], stages=True, now=8.0) == expected


def test_names_are_encoded_alike_whether_remembered_or_not() -> None:
    long_name = "n" * 1000
    for name in ("input", "\u00e9t\u00e9", long_name, "input"):
        tensor = Tensor.from_numpy(name, np.zeros((1, 2), np.float32))
        (got,) = wire.decode_requests(wire.encode_requests([_request(inputs=(tensor,))], "x")).items
        assert isinstance(got, Request) and got.inputs[0].name == name
    assert long_name not in wire._NAMES
