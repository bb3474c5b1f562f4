"""AMQP 0-9-1 with the least Python: the protocol's own floor.

A connection as an asyncio ``Protocol``: frames are parsed in
``data_received`` and handed on in place, with no task, queue or future per
frame (aiormq, under aio-pika, reads each frame in a task of its own, passes
it on through a queue to its channel's task, and starts a task per delivery;
it writes each frame through a writer task). The frames on the wire are the
ones aio-pika sends: a persistent or transient publish, mandatory, with a
publisher confirm; a consumer with a prefetch and manual acks, or without acks.

What the echo in :mod:`benchmarks.library_floor` needs, and no more: one
channel, PLAIN authentication, no TLS, no heartbeats, a delivery's
``correlation_id`` and ``reply_to`` read and its other properties skipped.
Methods off the hot path are read and written with pamqp.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import commands
from pamqp import frame as pframe

FRAME_END = b"\xce"
HEAD = struct.Struct(">BHI")  # type, channel, size
METHOD = struct.Struct(">HH")  # class, method
U64 = struct.Struct(">Q")
CONTENT = struct.Struct(">HHQH")  # class, weight, body size, property flags
CHANNEL = 1

# property flags, in the order their values follow the header (AMQP 0-9-1, 4.2.6.1)
_SHORTSTR_SKIPPED = (0x8000, 0x4000)  # content type, content encoding
_HEADERS = 0x2000
_OCTETS_SKIPPED = (0x1000, 0x0800)  # delivery mode, priority
_CORRELATION_ID, _REPLY_TO = 0x0400, 0x0200

OnDelivery = Callable[[int, bytes | None, bytes | None, bytes], None]
"""(delivery tag, correlation id, reply to, body)"""


class WireError(ConnectionError):
    """The broker closed the connection or the channel, or nacked a publish."""


def _short(b: bytes) -> bytes:
    return bytes((len(b),)) + b


def _properties(payload: memoryview) -> tuple[int, bytes | None, bytes | None]:
    """A content header's body size, correlation id and reply-to."""
    _, _, size, flags = CONTENT.unpack_from(payload)
    if flags & _HEADERS:  # a field table ahead of the two read: not sent by the echo
        raise WireError("a delivery with headers: this client does not read them")
    p = CONTENT.size
    for bit in _SHORTSTR_SKIPPED:
        if flags & bit:
            p += 1 + payload[p]
    for bit in _OCTETS_SKIPPED:
        if flags & bit:
            p += 1
    found: list[bytes | None] = []
    for bit in (_CORRELATION_ID, _REPLY_TO):
        if flags & bit:
            n = payload[p]
            found.append(bytes(payload[p + 1 : p + 1 + n]))
            p += 1 + n
        else:
            found.append(None)
    return size, found[0], found[1]


class Wire(asyncio.Protocol):
    """One AMQP connection with one channel (number 1), in confirm mode."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiters: dict[int, asyncio.Future[Any]] = {}  # channel -> its next sync reply
        self.consumers: dict[bytes, OnDelivery] = {}
        self._delivery: tuple[bytes, int] | None = None  # consumer tag, delivery tag
        self._props: tuple[bytes | None, bytes | None] = (None, None)
        self._left = 0
        self._body: list[bytes] = []
        self._published = 0
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()

    # ------------------------------------------------------------------ frames in
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(b"AMQP\x00\x00\x09\x01")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(WireError(f"connection lost: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(exc)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        view = memoryview(buf)
        try:
            while n - pos >= 8:
                kind, channel, size = HEAD.unpack_from(buf, pos)
                end = pos + 7 + size
                if end >= n:
                    break
                self._frame(kind, channel, view[pos + 7 : end])
                pos = end + 1
        finally:
            view.release()
        del buf[:pos]

    def _frame(self, kind: int, channel: int, payload: memoryview) -> None:
        if kind == 1:
            self._method_frame(channel, payload)
        elif kind == 2:
            self._left, *props = _properties(payload)
            self._props = (props[0], props[1])
            self._body = []
            if self._left == 0:
                self._delivered(b"")
        elif kind == 3:
            self._body.append(bytes(payload))
            self._left -= len(payload)
            if self._left <= 0:
                body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
                self._delivered(body)
        elif kind == 8:  # a heartbeat: answered in kind
            self._write(HEAD.pack(8, 0, 0) + FRAME_END)

    def _method_frame(self, channel: int, payload: memoryview) -> None:
        cls, meth = METHOD.unpack_from(payload)
        if cls == 60 and meth == 60:  # Basic.Deliver
            n = payload[4]
            tag = bytes(payload[5 : 5 + n])
            (dtag,) = U64.unpack_from(payload, 5 + n)
            self._delivery = (tag, dtag)
        elif cls == 60 and meth in (80, 120):  # Basic.Ack, Basic.Nack: confirms
            (dtag,) = U64.unpack_from(payload, 4)
            error = None if meth == 80 else WireError("the broker nacked a publish")
            self._confirmed(dtag, bool(payload[12] & 1), error)
        else:
            frame = HEAD.pack(1, channel, len(payload)) + bytes(payload) + FRAME_END
            self._method(channel, pframe.unmarshal(frame)[2])

    def _method(self, channel: int, method: Any) -> None:
        if isinstance(method, commands.Connection.Close | commands.Channel.Close):
            self._fail(WireError(f"{method.reply_code} {method.reply_text}"))
            if self._transport is not None:
                self._transport.close()
            return
        if isinstance(method, commands.Basic.Return):
            return  # its confirm follows; the echo's callers time out instead
        waiter = self._waiters.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(method)

    def _delivered(self, body: bytes) -> None:
        assert self._delivery is not None
        (tag, dtag), self._delivery = self._delivery, None
        self.consumers[tag](dtag, self._props[0], self._props[1], body)

    def _confirmed(self, dtag: int, multiple: bool, error: Exception | None) -> None:
        tags = [k for k in self._confirms if k <= dtag] if multiple else [dtag]
        for k in tags:
            future = self._confirms.pop(k, None)
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _fail(self, error: Exception) -> None:
        for future in [*self._waiters.values(), *self._confirms.values()]:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        self._confirms.clear()

    # ------------------------------------------------------------------ frames out
    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise WireError("connection closed")
        self._transport.write(data)

    async def call(self, channel: int, method: Any) -> Any:
        """Send a synchronous method and return the broker's answer."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[channel] = future
        self._write(pframe.marshal(method, channel))
        return await future

    def publish(
        self,
        routing_key: bytes,
        body: bytes,
        *,
        persistent: bool,
        correlation_id: bytes | None = None,
        reply_to: bytes | None = None,
    ) -> asyncio.Future[None]:
        """Publish on the default exchange, mandatory; the future is the confirm."""
        method = b"\x00\x3c\x00\x28\x00\x00\x00" + _short(routing_key) + b"\x01"
        flags, props = 0x1000, b"\x02" if persistent else b"\x01"
        if correlation_id is not None:
            flags, props = flags | _CORRELATION_ID, props + _short(correlation_id)
        if reply_to is not None:
            flags, props = flags | _REPLY_TO, props + _short(reply_to)
        header = CONTENT.pack(60, 0, len(body), flags) + props
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write(
            b"".join(
                (
                    HEAD.pack(1, CHANNEL, len(method)),
                    method,
                    FRAME_END,
                    HEAD.pack(2, CHANNEL, len(header)),
                    header,
                    FRAME_END,
                    HEAD.pack(3, CHANNEL, len(body)),
                    body,
                    FRAME_END,
                )
            )
        )
        self._published += 1
        self._confirms[self._published] = future
        return future

    def ack(self, delivery_tag: int) -> None:
        self._write(
            HEAD.pack(1, CHANNEL, 13) + b"\x00\x3c\x00\x50" + U64.pack(delivery_tag) + b"\x00\xce"
        )

    async def consume(self, queue: str, tag: str, on: OnDelivery, *, no_ack: bool) -> None:
        self.consumers[tag.encode()] = on
        await self.call(
            CHANNEL, commands.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack)
        )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_wire(url: str, *, prefetch: int = 0) -> Wire:
    """Connect to ``url`` (amqp://, PLAIN), open channel 1 in confirm mode."""
    parts = urlsplit(url)
    if parts.scheme != "amqp":
        raise ValueError(f"only amqp:// URLs: {url!r}")
    loop = asyncio.get_running_loop()
    wire = Wire()
    started: asyncio.Future[Any] = loop.create_future()
    wire._waiters[0] = started
    await loop.create_connection(lambda: wire, parts.hostname or "127.0.0.1", parts.port or 5672)
    await asyncio.wait_for(started, 10)  # Connection.Start
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    start_ok = commands.Connection.StartOk(
        client_properties={"product": "amqp_wire"},
        mechanism="PLAIN",
        response=f"\0{user}\0{password}",
        locale="en_US",
    )
    tune = await asyncio.wait_for(wire.call(0, start_ok), 10)
    wire._write(pframe.marshal(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0))
    vhost = unquote(parts.path[1:]) or "/"
    await wire.call(0, commands.Connection.Open(virtual_host=vhost))
    await wire.call(CHANNEL, commands.Channel.Open())
    await wire.call(CHANNEL, commands.Confirm.Select())
    if prefetch:
        await wire.call(CHANNEL, commands.Basic.Qos(prefetch_count=prefetch))
    return wire
