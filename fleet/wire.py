"""The binary encoding of fleet messages, version 2 (version 1 still decoded).

A broker message is one *frame* holding one or more items, so that many
requests (or replies) share the per-message cost of the broker::

    frame   := magic "\\x89FLT" | version u8 | kind u8 | flags u16
               | reply_to str | count u32 | item*count
    item    := length u32 | id str | body            (one bad body never fails its neighbours)
    request := model str | version str | deadline f64 | sent_at f64
               | timeout f64 (version 2 on) | priority u8
               | nparams u16 | param* | nheaders u8 (version 3) | header*
               | ninputs u16 | tensor*
    header  := key str | value str
    reply   := model str | version str | status u8 (0 ok, 1 error)
               | [code u16 | retriable u8 | message str]
               | queue_ms f32 | inference_ms f32 | batch_size u32 | worker_id str
               | received_at f64 | replied_at f64 (version 2 only)
               | noutputs u16 | tensor*
    tensor  := name str | datatype u8 | rank u8 | dim u64*rank | nbytes u64 | data
    param   := key str | tag u8 (0 bool, 1 int, 2 float, 3 str) | value
    str     := length u16 | utf-8

All integers are little-endian. Every length, every tensor dimension, each
tensor's element count and every ``BYTES`` element length are checked against
:class:`Limits` and the data before anything is allocated; malformed input
raises a :class:`fleet.errors.DecodeError` (or a subclass), never anything
else, and a malformed item becomes an :class:`~fleet.contract.ItemError`
carrying its id (when readable) while its neighbours decode normally.

Versions: request frames are written as version 2, which adds ``timeout``,
the seconds of budget the request had left when it was published (the
client's clock measured it, so it means the same on every host). Version 1
request frames (no ``timeout``) are still decoded; their requests are judged
on the wall clock alone. Version 3 adds ``headers`` (the W3C trace context
of :mod:`fleet.tracing`); a client writes it only for requests that carry
headers, so only tracing needs workers of this build. The decoder stamps
every request with the local
:func:`time.monotonic` of its arrival; see :mod:`fleet.contract` for what
clock skew does to deadlines.

Reply frames are written as version 1 unless the request frame they answer
set :data:`FLAG_STAGES` in its ``flags``: its client reads version 2, which
adds the worker's wall-clock times of receipt and reply (the stages of
:mod:`fleet.stages`). A build that does not know the flag ignores it, so a
client of either build and a worker of either build always understand each
other.
"""

from __future__ import annotations

import math
import struct
import time
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.contract import (
    ErrorInfo,
    ItemError,
    ParamValue,
    Priority,
    Reply,
    Request,
    make_reply,
    make_request,
    make_timings,
)
from fleet.errors import (
    DecodeError,
    FleetError,
    InvalidArgument,
    LimitExceeded,
    UnsupportedVersion,
)
from fleet.tensor import DataType, Tensor, check_bytes_elements, check_shape, make_tensor

MAGIC = b"\x89FLT"
VERSION = 2  # requests without headers
HEADERS_VERSION = 3  # requests with headers
VERSIONS = (1, 2, 3)  # decoded
_REPLY_VERSION = 1  # read by every build; version 2 only for a client that asked
KIND_REQUESTS = 1
KIND_REPLIES = 2
FLAG_STAGES = 0x1
"""Request frame flag: the client reads version 2 replies (stage times)."""
FLAG_CLAIMS = 0x2
"""Request frame flag: the client reads replies through a payload store
(:mod:`fleet.payloads`); a worker claims large replies only for such clients."""

Parts = list[bytes | memoryview]
"""The pieces of an encoded item, joined once into its frame."""

_HEAD = struct.Struct("<4sBBH")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_MAX_ERROR_MESSAGE = 4096
_TIMEOUT_PART = 4  # index of the timeout in encode_request_body's parts
# a tensor's head after its name: datatype, rank, each dimension, then nbytes
_TENSOR_HEADS = [struct.Struct(f"<BB{rank + 1}Q") for rank in range(256)]
_PRIORITY_NPARAMS = struct.Struct("<BH")
_TIMINGS = struct.Struct("<ffI")
_TWO_F64 = struct.Struct("<dd")
_I64_RANGE = range(-(1 << 63), 1 << 63)
_F32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """What a decoder accepts. Enforced while decoding, before allocating."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_items: int = 4096
    max_tensors: int = 64
    max_rank: int = 8
    max_elements: int = 1 << 27
    max_parameters: int = 64
    max_headers: int = 16


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- encoding


def _str_bytes(value: str) -> bytes:
    """``value`` as the wire writes a string: its UTF-8 length, then its bytes."""
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"string {value[:40]!r} is not encodable as UTF-8") from None
    if len(raw) > 0xFFFF:
        raise LimitExceeded(f"string of {len(raw)} bytes is longer than 65535")
    return _U16.pack(len(raw)) + raw


_NAMES: dict[str, bytes] = {}  # names seen (models, versions, tensors, workers), encoded
_MAX_NAMES = 1024  # at most this many kept, each of at most _MAX_NAME_CHARS
_MAX_NAME_CHARS = 128


def _name_bytes(value: str) -> bytes:
    """:func:`_str_bytes` of a name: the same few recur in every message."""
    known = _NAMES.get(value)
    if known is None:
        known = _str_bytes(value)
        if len(_NAMES) < _MAX_NAMES and len(value) <= _MAX_NAME_CHARS:
            _NAMES[value] = known
    return known


def _str(parts: Parts, value: str) -> None:
    parts.append(_str_bytes(value))


def _tensor(parts: Parts, t: Tensor) -> None:
    shape = t.shape
    check_shape(t.name, shape)
    rank = len(shape)
    if rank > 0xFF:
        raise InvalidArgument(f"tensor {t.name!r}: rank {rank} is over 255")
    parts.append(
        _name_bytes(t.name) + _TENSOR_HEADS[rank].pack(t.datatype, rank, *shape, len(t.data))
    )
    parts.append(t.data)  # not copied: the frame's join is the one copy


def _param(parts: Parts, key: str, value: ParamValue) -> None:
    _str(parts, key)
    if isinstance(value, bool):
        parts.append(b"\x00\x01" if value else b"\x00\x00")
    elif isinstance(value, int):
        if value not in _I64_RANGE:
            raise InvalidArgument(f"parameter {key!r}: {value} does not fit in a signed 64-bit int")
        parts.append(b"\x01" + _I64.pack(value))
    elif isinstance(value, float):
        parts.append(b"\x02" + _F64.pack(value))
    else:
        parts.append(b"\x03")
        _str(parts, str(value))


def _f32(value: float) -> float:
    """``value`` within what an f32 holds (NaN stays NaN)."""
    return max(-_F32_MAX, min(_F32_MAX, value)) if math.isfinite(value) else value


def _frame(
    kind: int, reply_to: str, items: Sequence[Parts], *, version: int, flags: int = 0
) -> bytes:
    parts: Parts = [_HEAD.pack(MAGIC, version, kind, flags)]
    _str(parts, reply_to)
    parts.append(_U32.pack(len(items)))
    for item in items:
        parts.append(_U32.pack(sum(map(len, item))))
        parts.extend(item)
    return b"".join(parts)


def body_version(req: Request) -> int:
    """The frame version a request's body is written in."""
    return HEADERS_VERSION if req.headers else VERSION


def encode_request_body(req: Request) -> Parts:
    """One request as the parts of a frame item (cached by the client for
    re-sends; :func:`with_timeout` restamps its budget at each publish). A
    request without a ``timeout`` gets the time left to its deadline now.
    Tensor data is referenced, not copied: it must not change until the
    request is answered."""
    timeout = req.deadline - time.time() if req.timeout is None else req.timeout
    parts: Parts = [
        _str_bytes(req.id),
        _name_bytes(req.model),
        _name_bytes(req.version or ""),
        _TWO_F64.pack(req.deadline, req.sent_at),
        _F64.pack(timeout),  # _TIMEOUT_PART
        _PRIORITY_NPARAMS.pack(req.priority, len(req.parameters)),
    ]
    for key, value in req.parameters.items():
        _param(parts, key, value)
    if req.headers:
        if len(req.headers) > 0xFF:
            raise LimitExceeded(f"{len(req.headers)} headers is over 255")
        parts.append(_U8.pack(len(req.headers)))
        for key, text in req.headers.items():
            _str(parts, key)
            _str(parts, text)
    parts.append(_U16.pack(len(req.inputs)))
    for t in req.inputs:
        _tensor(parts, t)
    return parts


def with_timeout(body: Parts, seconds: float) -> Parts:
    """A body from :func:`encode_request_body` with its budget set to ``seconds``."""
    out = list(body)
    out[_TIMEOUT_PART] = _F64.pack(seconds)
    return out


def encode_requests(
    requests: Iterable[Request | Parts],
    reply_to: str,
    *,
    flags: int = 0,
    version: int | None = None,
) -> bytes:
    """Requests (or bodies from :func:`encode_request_body`) as one frame.

    Every body of a frame has its version (:func:`body_version`): requests
    with headers and without cannot share a frame. Bodies given as parts
    need ``version`` when they are not :data:`VERSION`'s."""
    requests = list(requests)
    versions = {body_version(r) for r in requests if isinstance(r, Request)}
    if version is not None:
        versions.add(version)
    if len(versions) > 1:
        raise InvalidArgument("requests with headers and without cannot share a frame")
    items = [r if isinstance(r, list) else encode_request_body(r) for r in requests]
    frame_version = versions.pop() if versions else VERSION
    return _frame(KIND_REQUESTS, reply_to, items, version=frame_version, flags=flags)


def encode_replies(
    replies: Iterable[Reply], *, stages: bool = False, now: float | None = None
) -> bytes:
    """Replies as one frame: version 2 with stage times when ``stages`` (the
    request frame set :data:`FLAG_STAGES`), each stamped ``replied_at`` =
    ``now`` (default :func:`time.time`); else version 1."""
    replied_at = (time.time() if now is None else now) if stages else 0.0
    items: list[Parts] = []
    for rep in replies:
        parts: Parts = [_str_bytes(rep.id), _name_bytes(rep.model), _name_bytes(rep.version)]
        if rep.error is None:
            parts.append(b"\x00")
        else:
            message = rep.error.message.encode()[:_MAX_ERROR_MESSAGE].decode(errors="ignore")
            parts.append(b"\x01" + _U16.pack(rep.error.code) + _U8.pack(rep.error.retriable))
            _str(parts, message)
        tm = rep.timings
        parts.append(_TIMINGS.pack(_f32(tm.queue_ms), _f32(tm.inference_ms), tm.batch_size))
        parts.append(_name_bytes(tm.worker_id))
        if stages:
            parts.append(_TWO_F64.pack(tm.received_at, replied_at if tm.received_at else 0.0))
        parts.append(_U16.pack(len(rep.outputs)))
        for t in rep.outputs:
            _tensor(parts, t)
        items.append(parts)
    return _frame(KIND_REPLIES, "", items, version=2 if stages else _REPLY_VERSION)


# --------------------------------------------------------------------------- decoding


def _truncated(wanted: int, pos: int, end: int) -> DecodeError:
    return DecodeError(f"truncated: wanted {wanted} bytes at offset {pos}, {end - pos} left")


class _Reader:
    """Reads fields in place (``unpack_from``): no slice is made for a number."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def _advance(self, n: int) -> int:
        """Move past ``n`` bytes; where they start."""
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise _truncated(n, pos, self.end)
        self.pos = pos + n
        return pos

    def fields(self, st: struct.Struct) -> tuple[typing.Any, ...]:
        """Several fixed-size fields at once."""
        return st.unpack_from(self.buf, self._advance(st.size))

    def unpack(self, st: struct.Struct) -> int:
        return st.unpack_from(self.buf, self._advance(st.size))[0]  # type: ignore[no-any-return]

    def f64(self) -> float:
        return float(_F64.unpack_from(self.buf, self._advance(8))[0])

    def str(self) -> str:
        buf, pos = self.buf, self.pos  # inlined: the hottest read of all
        start = pos + 2
        if start > self.end:
            raise _truncated(2, pos, self.end)
        stop = start + (buf[pos] | buf[pos + 1] << 8)
        if stop > self.end:
            raise _truncated(stop - start, start, self.end)
        self.pos = stop
        try:
            return str(buf[start:stop], "utf-8")
        except UnicodeDecodeError:
            raise DecodeError("a string is not valid UTF-8") from None


def _bytes_view(data: bytes | memoryview) -> memoryview:
    """``data`` as a flat view of bytes (a view of another format indexes as it)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")
        except TypeError:  # not contiguous
            view = memoryview(view.tobytes())
    return view


_DATATYPES = {int(d): (d, d.itemsize) for d in DataType}
_PRIORITIES = {int(p): p for p in Priority}


def _read_tensor(r: _Reader, limits: Limits) -> Tensor:
    name = r.str()
    buf, pos, end = r.buf, r.pos, r.end  # fields read in place: the hottest path of all
    if pos + 2 > end:
        raise _truncated(2, pos, end)
    code, rank = buf[pos], buf[pos + 1]
    known = _DATATYPES.get(code)
    if known is None:
        raise DecodeError(f"tensor {name!r}: unknown datatype code {code}")
    datatype, itemsize = known
    if rank > limits.max_rank:
        raise LimitExceeded(f"tensor {name!r}: rank {rank} is over the limit of {limits.max_rank}")
    head = _TENSOR_HEADS[rank]
    if pos + head.size > end:
        raise _truncated(head.size, pos, end)
    fields: tuple[int, ...] = head.unpack_from(buf, pos)
    pos += head.size
    shape, nbytes = fields[2 : rank + 2], fields[rank + 2]
    count = math.prod(shape)
    if count > limits.max_elements:
        raise LimitExceeded(
            f"tensor {name!r}: {count} elements is over the limit of {limits.max_elements}"
        )
    if not count:  # a zero-element shape may still name a huge dimension
        for dim in shape:
            if dim > limits.max_elements:
                raise LimitExceeded(
                    f"tensor {name!r}: dimension {dim} is over the limit of {limits.max_elements}"
                )
    if datatype is not DataType.BYTES and nbytes != count * itemsize:
        raise DecodeError(
            f"tensor {name!r}: {nbytes} bytes of data, shape {list(shape)} of "
            f"{datatype.name} needs {count * itemsize}"
        )
    if pos + nbytes > end:
        raise _truncated(nbytes, pos, end)
    r.pos = pos + nbytes
    data = buf[pos : pos + nbytes]
    if datatype is DataType.BYTES:
        try:
            check_bytes_elements(name, data, count)
        except InvalidArgument as exc:
            raise DecodeError(exc.message) from None
    return make_tensor(name, datatype, shape, data)


def _read_tensors(r: _Reader, limits: Limits) -> tuple[Tensor, ...]:
    n = r.unpack(_U16)
    if n > limits.max_tensors:
        raise LimitExceeded(f"{n} tensors is over the limit of {limits.max_tensors}")
    if n == 1:
        return (_read_tensor(r, limits),)
    tensors = tuple([_read_tensor(r, limits) for _ in range(n)])
    if n == 2:  # a common case (a label and its scores): no set to build
        shared = tensors[0].name == tensors[1].name
    else:
        shared = len({t.name for t in tensors}) != n
    if shared:
        raise DecodeError("two tensors share a name")
    return tensors


def _read_param(r: _Reader) -> tuple[str, ParamValue]:
    key = r.str()
    tag = r.unpack(_U8)
    value: ParamValue
    if tag == 0:
        value = bool(r.unpack(_U8))
    elif tag == 1:
        value = r.unpack(_I64)
    elif tag == 2:
        value = r.f64()
    elif tag == 3:
        value = r.str()
    else:
        raise DecodeError(f"parameter {key!r}: unknown type tag {tag}")
    return key, value


def _read_request(r: _Reader, rid: str, limits: Limits, ctx: _Context) -> Request:
    model = r.str()
    version = r.str() or None
    deadline, sent_at = r.fields(_TWO_F64)
    timeout = r.f64() if ctx.version >= 2 else None
    prio = r.unpack(_U8)
    priority = _PRIORITIES.get(prio)
    if priority is None:
        raise DecodeError(f"unknown priority {prio}")
    nparams = r.unpack(_U16)
    if nparams > limits.max_parameters:
        raise LimitExceeded(f"{nparams} parameters is over the limit of {limits.max_parameters}")
    params = dict(_read_param(r) for _ in range(nparams))
    headers: dict[str, str] = {}
    if ctx.version >= HEADERS_VERSION:
        nheaders = r.unpack(_U8)
        if nheaders > limits.max_headers:
            raise LimitExceeded(f"{nheaders} headers is over the limit of {limits.max_headers}")
        for _ in range(nheaders):
            key = r.str()
            headers[key] = r.str()
    inputs = _read_tensors(r, limits)
    return make_request(
        rid,
        model,
        version,
        inputs,
        deadline,
        priority,
        params,
        sent_at,
        timeout,
        ctx.arrived,
        headers,
    )


def _read_reply(r: _Reader, rid: str, limits: Limits, ctx: _Context) -> Reply:
    model = r.str()
    version = r.str()
    status = r.unpack(_U8)
    error: ErrorInfo | None = None
    if status == 1:
        code = r.unpack(_U16)
        retriable = bool(r.unpack(_U8))
        error = ErrorInfo(code=code, message=r.str(), retriable=retriable)
    elif status != 0:
        raise DecodeError(f"unknown reply status {status}")
    queue_ms, inference_ms, batch_size = r.fields(_TIMINGS)
    worker_id = r.str()
    received_at, replied_at = r.fields(_TWO_F64) if ctx.version >= 2 else (0.0, 0.0)
    timings = make_timings(queue_ms, inference_ms, batch_size, worker_id, received_at, replied_at)
    outputs = _read_tensors(r, limits)
    return make_reply(rid, model, version, outputs, error, timings, None)


@dataclass(frozen=True, slots=True)
class _Context:
    version: int  # the frame's
    arrived: float  # time.monotonic() when decoding began


@dataclass(frozen=True, kw_only=True, slots=True)
class Frame:
    kind: int
    reply_to: str
    items: list[Request | Reply | ItemError]
    flags: int = 0


def decode(
    data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS, *, arrived: float | None = None
) -> Frame:
    """Decode a frame. Frame-level damage raises :class:`DecodeError`; a damaged
    item becomes an :class:`ItemError` (with its id when that much was readable).
    Requests are stamped ``arrived`` (default: :func:`time.monotonic` now)."""
    stamp = time.monotonic() if arrived is None else arrived
    if len(data) > limits.max_message_bytes:
        raise LimitExceeded(
            f"message of {len(data)} bytes is over the limit of {limits.max_message_bytes}"
        )
    r = _Reader(_bytes_view(data))
    if len(data) < _HEAD.size:
        raise DecodeError(f"message of {len(data)} bytes is shorter than a frame header")
    magic, version, kind, flags = r.fields(_HEAD)
    if magic != MAGIC:
        raise DecodeError("not a fleet message (bad magic)")
    if version not in VERSIONS:
        raise UnsupportedVersion(
            f"schema version {version}; this build speaks {', '.join(map(str, VERSIONS))}"
        )
    if kind not in (KIND_REQUESTS, KIND_REPLIES):
        raise DecodeError(f"unknown frame kind {kind}")
    reply_to = r.str()
    count = r.unpack(_U32)
    if count > limits.max_items:
        raise LimitExceeded(f"{count} items is over the limit of {limits.max_items}")
    read_body = _read_request if kind == KIND_REQUESTS else _read_reply
    ctx = _Context(version=version, arrived=stamp)
    items: list[Request | Reply | ItemError] = []
    for _ in range(count):
        size = r.unpack(_U32)
        item = _Reader(r.buf, r.pos, r.pos + size)
        r._advance(size)  # bounds-checks the whole item before reading into it
        rid = ""
        try:
            rid = item.str()
            body = read_body(item, rid, limits, ctx)
            if item.pos != item.end:
                raise DecodeError(f"{item.end - item.pos} trailing bytes in an item")
            items.append(body)
        except FleetError as exc:
            items.append(ItemError(id=rid, error=exc))
    if r.pos != r.end:
        raise DecodeError(f"{r.end - r.pos} trailing bytes after the last item")
    return Frame(kind=kind, reply_to=reply_to, items=items, flags=flags)


def salvage_ids(data: bytes | memoryview, max_items: int = 65_536) -> tuple[str, list[str]]:
    """Best effort for a frame :func:`decode` refused (too large, say): the
    reply address and the request ids it can still read, so their callers can
    be told at once. Never raises."""
    reply_to = ""
    ids: list[str] = []
    try:
        r = _Reader(_bytes_view(data))
        magic, _version, kind, _flags = r.fields(_HEAD)
        if magic != MAGIC or kind != KIND_REQUESTS:
            return "", []
        reply_to = r.str()
        count = min(r.unpack(_U32), max_items)
        for _ in range(count):
            size = r.unpack(_U32)
            item = _Reader(r.buf, r.pos, r.pos + size)
            r._advance(size)
            ids.append(item.str())
    except FleetError:
        pass
    return reply_to, ids


def decode_requests(
    data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS, *, arrived: float | None = None
) -> Frame:
    frame = decode(data, limits, arrived=arrived)
    if frame.kind != KIND_REQUESTS:
        raise DecodeError("expected a request frame, got replies")
    return frame


def decode_replies(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Frame:
    frame = decode(data, limits)
    if frame.kind != KIND_REPLIES:
        raise DecodeError("expected a reply frame, got requests")
    return frame


__all__ = [
    "DEFAULT_LIMITS",
    "FLAG_CLAIMS",
    "FLAG_STAGES",
    "HEADERS_VERSION",
    "VERSION",
    "VERSIONS",
    "Frame",
    "Limits",
    "Parts",
    "body_version",
    "decode",
    "decode_replies",
    "decode_requests",
    "encode_replies",
    "encode_request_body",
    "encode_requests",
    "salvage_ids",
    "with_timeout",
]
