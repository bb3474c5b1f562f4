"""AMQP 0-9-1 over an asyncio ``Protocol``: frames parsed in ``data_received``
and handed on in place.

aiormq, under aio-pika, reads each frame in a task, passes it through a queue
to its channel's task, starts a task per delivery, and writes each frame
through a writer task of its own: several turns of the event loop and a
handful of futures per message. Here a delivery reaches its consumer's
callback, and a confirm its publisher's future, in the same turn that read
their bytes, and a publish is one ``write``. The frames are the protocol's;
the methods off the hot path are read and written with pamqp.

What a request/reply data path needs: channels in confirm mode or not,
a prefetch, queue declares and binds, consumers with manual acks or none,
server-sent cancels, mandatory publishes whose returns fail their confirm,
bodies over several frames, PLAIN or EXTERNAL login, TLS, heartbeats both
ways (a peer silent for two intervals is dropped), ``Connection.Blocked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pamqp import commands, decode
from pamqp import frame as pframe

from fleet.logging import get_logger

log = get_logger(__name__)

FRAME_END = b"\xce"
HEAD = struct.Struct(">BHI")  # type, channel, size
METHOD = struct.Struct(">HH")  # class, method
U64 = struct.Struct(">Q")
CONTENT = struct.Struct(">HHQH")  # class, weight, body size, property flags
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

# content header property flags, in the order their values follow (4.2.6.1)
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS = 0x8000, 0x4000, 0x2000
_DELIVERY_MODE, _PRIORITY, _CORRELATION_ID = 0x1000, 0x0800, 0x0400
_REPLY_TO, _EXPIRATION, _MESSAGE_ID = 0x0200, 0x0100, 0x0080


class WireError(ConnectionError):
    """The connection or channel is gone, or a publish was not taken."""


class WireClosed(WireError):
    """The broker closed the connection or the channel, with its reason."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(f"{reply_code} {reply_text}")
        self.reply_code, self.reply_text = reply_code, reply_text


class Returned(WireError):
    """A mandatory publish that no queue took (the broker returned it)."""


class Nacked(WireError):
    """A publish the broker nacked (a full queue, or one it could not commit)."""


@dataclass(slots=True)
class Delivered:
    body: bytes
    delivery_tag: int
    redelivered: bool
    headers: dict[str, Any] | None
    message_id: str | None


OnDelivery = Callable[[Delivered], None]


@dataclass(slots=True)
class _Content:
    """A message being read: its method's fields, then its header's, then its body."""

    on_done: Callable[[_Content], None]
    tag: bytes = b""
    delivery_tag: int = 0
    redelivered: bool = False
    size: int = 0
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    parts: list[bytes] | None = None


def _short(b: bytes) -> bytes:
    return bytes((len(b),)) + b


def _read_properties(payload: memoryview, content: _Content) -> None:
    """Body size, headers and message id of a content header frame."""
    _, _, content.size, flags = CONTENT.unpack_from(payload)
    p = CONTENT.size
    for bit in (_CONTENT_TYPE, _CONTENT_ENCODING):
        if flags & bit:
            p += 1 + payload[p]
    if flags & _HEADERS:
        used, content.headers = decode.field_table(bytes(payload[p:]))
        p += used
    p += bool(flags & _DELIVERY_MODE) + bool(flags & _PRIORITY)
    for bit in (_CORRELATION_ID, _REPLY_TO, _EXPIRATION):
        if flags & bit:
            p += 1 + payload[p]
    if flags & _MESSAGE_ID:
        n = payload[p]
        content.message_id = bytes(payload[p + 1 : p + 1 + n]).decode()


class WireChannel:
    """One channel: sync methods one at a time, publishes and acks at once."""

    def __init__(self, conn: WireConnection, number: int) -> None:
        self.conn, self.number = conn, number
        self.closed: BaseException | None = None
        self.on_close: list[Callable[[BaseException], None]] = []
        self.on_cancel: list[Callable[[str], None]] = []
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[Any] | None = None
        self._consumers: dict[bytes, OnDelivery] = {}
        self._content: _Content | None = None
        self._confirming = False
        self._published = 0
        self._confirms: dict[int, asyncio.Future[None]] = {}
        self._returned: set[int] = set()
        self._abandoned = False
        self._head = struct.pack(">BH", 1, number)

    @property
    def is_closed(self) -> bool:
        return self.closed is not None

    # ------------------------------------------------------------------ sync methods
    async def call(self, method: Any) -> Any:
        """Send a synchronous method, return the broker's answer."""
        async with self._lock:
            if self.closed is not None:
                raise WireError(f"channel {self.number} is closed: {self.closed}")
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            self.conn.write(pframe.marshal(method, self.number))
            name = type(method).__name__
            try:
                return await self._answer(waiter)
            except TimeoutError:
                error = WireError(f"no answer to {name} in {self.conn.call_timeout} s")
                self._abandon(error)
                raise error from None
            except asyncio.CancelledError:
                if not waiter.done():
                    self._abandon(WireError(f"{name} given up before its answer"))
                raise

    async def _answer(self, waiter: asyncio.Future[Any]) -> Any:
        """The call's answer, within the connection's call timeout; while the
        broker blocks the connection (it reads nothing from it) the wait goes on."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), self.conn.call_timeout)
            except TimeoutError:
                if self.conn.blocked is None:
                    raise

    def _abandon(self, error: BaseException) -> None:
        """Out of step with the broker (a call it did not answer in time, or
        given up): closed for its users now, and closed with the broker; its
        number stays taken until the broker's CloseOk, and what comes on it
        meanwhile (a late answer, deliveries, confirms) is dropped."""
        if self.closed is not None:
            return
        self._closed(error, keep_number=True)
        self._abandoned = True
        close = commands.Channel.Close(
            reply_code=200, reply_text="abandoned", class_id=0, method_id=0
        )
        with contextlib.suppress(WireError):
            self.conn.write(pframe.marshal(close, self.number))

    async def confirm_select(self) -> None:
        await self.call(commands.Confirm.Select())
        self._confirming = True

    async def qos(self, prefetch: int) -> None:
        await self.call(commands.Basic.Qos(prefetch_count=prefetch))

    async def declare_queue(self, name: str = "", **options: Any) -> tuple[str, int, int]:
        """Queue.Declare (``durable``, ``exclusive``, ``auto_delete``,
        ``arguments``, ``passive``): its name, messages and consumers."""
        ok = await self.call(commands.Queue.Declare(queue=name, **options))
        return str(ok.queue), int(ok.message_count), int(ok.consumer_count)

    async def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        await self.call(
            commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key)
        )

    async def consume(
        self, queue: str, on_delivery: OnDelivery, *, no_ack: bool, tag: str = ""
    ) -> str:
        """Start a consumer; its deliveries may come in the same read as the
        broker's ConsumeOk, so the tag is chosen and registered first."""
        tag = tag or f"fleet.{uuid.uuid4().hex}"
        self._consumers[tag.encode()] = on_delivery
        try:
            await self.call(commands.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack))
        except BaseException:
            self._consumers.pop(tag.encode(), None)
            raise
        return tag

    async def cancel(self, tag: str) -> None:
        await self.call(commands.Basic.Cancel(consumer_tag=tag))
        self._consumers.pop(tag.encode(), None)

    async def close(self) -> None:
        if self.closed is None and not self.conn.is_closed:
            with contextlib.suppress(WireError):
                await self.call(
                    commands.Channel.Close(
                        reply_code=200, reply_text="bye", class_id=0, method_id=0
                    )
                )
        self._closed(WireError(f"channel {self.number} closed"))

    # ------------------------------------------------------------------ frames out
    @property
    def unconfirmed(self) -> int:
        """How many publishes wait for their confirm."""
        return len(self._confirms)

    def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        persistent: bool,
        mandatory: bool = True,
    ) -> asyncio.Future[None]:
        """Publish; the future is the broker's confirm (done at once where the
        channel is not in confirm mode). A return fails it with
        :class:`Returned`, a nack with :class:`Nacked`."""
        if self.closed is not None:
            raise WireError(f"channel {self.number} is closed: {self.closed}")
        seq = self._published + 1  # the broker's count, once the frames are written
        method = (
            b"\x00\x3c\x00\x28\x00\x00"
            + _short(exchange.encode())
            + _short(routing_key.encode())
            + (b"\x01" if mandatory else b"\x00")
        )
        props = (b"\x02" if persistent else b"\x01") + _short(str(seq).encode())
        header = CONTENT.pack(60, 0, len(body), _DELIVERY_MODE | _MESSAGE_ID) + props
        head, end = self._head, FRAME_END
        parts = [head, struct.pack(">I", len(method)), method, end]
        parts += [struct.pack(">BHI", 2, self.number, len(header)), header, end]
        chunk = self.conn.frame_max - 8
        for at in range(0, len(body), chunk) if body else ():
            piece = body[at : at + chunk]
            parts += [struct.pack(">BHI", 3, self.number, len(piece)), piece, end]
        self.conn.write(b"".join(parts))  # raises, and counts nothing, on a closed connection
        self._published = seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._confirming:
            self._confirms[seq] = future
        else:
            future.set_result(None)
        return future

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._settle(80, delivery_tag, 1 if multiple else 0)

    def nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        self._settle(120, delivery_tag, (1 if multiple else 0) | (2 if requeue else 0))

    def _settle(self, method: int, delivery_tag: int, bits: int) -> None:
        if self.closed is not None:
            raise WireError(f"channel {self.number} is closed: {self.closed}")
        self.conn.write(
            self._head
            + b"\x00\x00\x00\x0d\x00\x3c"
            + bytes((0, method))
            + U64.pack(delivery_tag)
            + bytes((bits,))
            + FRAME_END
        )

    # ------------------------------------------------------------------ frames in
    def method_frame(self, payload: memoryview) -> None:
        cls, meth = METHOD.unpack_from(payload)
        if cls == 60 and meth == 60:  # Basic.Deliver
            n = payload[4]
            content = _Content(self._delivered, tag=bytes(payload[5 : 5 + n]))
            content.delivery_tag, bits = struct.unpack_from(">QB", payload, 5 + n)
            content.redelivered = bool(bits & 1)
            self._content = content
        elif cls == 60 and meth in (80, 120):  # Basic.Ack, Basic.Nack: confirms
            (tag,) = U64.unpack_from(payload, 4)
            self._confirmed(tag, bool(payload[12] & 1), meth == 80)
        else:
            frame = HEAD.pack(1, self.number, len(payload)) + bytes(payload) + FRAME_END
            self._method(pframe.unmarshal(frame)[2])

    def header_frame(self, payload: memoryview) -> None:
        content = self._content
        if content is None:
            raise WireError(f"a content header with no method on channel {self.number}")
        _read_properties(payload, content)
        content.parts = []
        if content.size == 0:
            self._content = None
            content.on_done(content)

    def body_frame(self, payload: memoryview) -> None:
        content = self._content
        if content is None or content.parts is None:
            raise WireError(f"a body frame with no header on channel {self.number}")
        content.parts.append(bytes(payload))
        content.size -= len(payload)
        if content.size <= 0:
            self._content = None
            content.on_done(content)

    def _delivered(self, content: _Content) -> None:
        parts = content.parts or [b""]
        on_delivery = self._consumers.get(content.tag)
        if on_delivery is None:
            return  # cancelled meanwhile: the broker requeues it with the channel
        delivered = Delivered(
            parts[0] if len(parts) == 1 else b"".join(parts),
            content.delivery_tag,
            content.redelivered,
            content.headers,
            content.message_id,
        )
        try:
            on_delivery(delivered)
        except Exception:  # the consumer's fault: the connection carries on
            log.exception("delivery callback failed", channel=self.number)

    def _returned_message(self, content: _Content) -> None:
        if content.message_id is not None and content.message_id.isdigit():
            self._returned.add(int(content.message_id))

    def _confirmed(self, tag: int, multiple: bool, ack: bool) -> None:
        if multiple:  # publishes are numbered in order, and kept in that order
            tags = []
            for k in self._confirms:
                if k > tag:
                    break
                tags.append(k)
        else:
            tags = [tag]
        for k in tags:
            future = self._confirms.pop(k, None)
            returned = k in self._returned
            self._returned.discard(k)
            if future is None or future.done():
                continue
            if not ack:
                future.set_exception(Nacked(f"the broker nacked publish {k}"))
            elif returned:
                future.set_exception(Returned("no queue took the message"))
            else:
                future.set_result(None)

    def _method(self, method: Any) -> None:
        if isinstance(method, commands.Channel.Close):
            self.conn.write(pframe.marshal(commands.Channel.CloseOk(), self.number))
            self._closed(WireClosed(method.reply_code or 0, str(method.reply_text)))
            self.conn.channels.pop(self.number, None)
        elif self._abandoned:
            if isinstance(method, commands.Channel.CloseOk):
                self.conn.channels.pop(self.number, None)
        elif isinstance(method, commands.Basic.Return):
            self._content = _Content(self._returned_message)
        elif isinstance(method, commands.Basic.Cancel):  # the broker's: its queue is gone
            tag = str(method.consumer_tag)
            self._consumers.pop(tag.encode(), None)
            for callback in list(self.on_cancel):
                callback(tag)
        else:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(method)

    def _closed(self, exc: BaseException, *, keep_number: bool = False) -> None:
        if self.closed is not None:
            return
        self.closed = exc
        if not keep_number:
            self.conn.channels.pop(self.number, None)
        self._consumers.clear()
        waiters = [self._waiter, *self._confirms.values()]
        self._waiter, self._confirms = None, {}
        for future in waiters:
            if future is not None and not future.done():
                future.set_exception(exc)
        for callback in list(self.on_close):
            callback(exc)


class WireConnection(asyncio.Protocol):
    """One AMQP connection; channels from :meth:`channel`."""

    def __init__(self, heartbeat: int, call_timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.call_timeout = call_timeout  # seconds a channel's method waits for its answer
        self.channels: dict[int, WireChannel] = {}
        self.frame_max = 131072
        self.heartbeat = heartbeat
        self.blocked: str | None = None  # the broker's reason, while it blocks publishes
        self.closed: asyncio.Future[BaseException] = loop.create_future()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Any] | None = None  # channel 0's next method
        self._next_channel = 1
        self.channel_max = 2047  # until the broker's Tune
        self._wrote = self._heard = False
        self._ticker: asyncio.TimerHandle | None = None
        self._silent_ticks = 0

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    # ------------------------------------------------------------------ opening
    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        login: str = "guest",
        password: str = "guest",
        external: bool = False,
        vhost: str = "/",
        ssl_context: ssl.SSLContext | None = None,
        heartbeat: int = 60,
        name: str | None = None,
        timeout: float = 10.0,
    ) -> WireConnection:
        """Connect, log in (PLAIN, or EXTERNAL with a client certificate),
        tune and open ``vhost``; all within ``timeout`` seconds, as each
        channel method afterwards."""
        conn = cls(heartbeat, timeout)
        loop = asyncio.get_running_loop()
        started = conn._expect()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, host, port, ssl=ssl_context)
                await conn._handshake(started, login, password, external, vhost, name)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _handshake(
        self,
        started: asyncio.Future[Any],
        login: str,
        password: str,
        external: bool,
        vhost: str,
        name: str | None,
    ) -> None:
        start = await started
        mechanism = "EXTERNAL" if external else "PLAIN"
        offered = str(start.mechanisms).split()
        if mechanism not in offered:
            raise WireError(f"the broker does not offer {mechanism} login; it offers {offered}")
        properties: dict[str, Any] = {
            "product": "fleet",
            "capabilities": {
                "publisher_confirms": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "authentication_failure_close": True,
            },
        }
        if name:
            properties["connection_name"] = name
        response = "" if external else f"\0{login}\0{password}"
        tune = await self._call(
            commands.Connection.StartOk(
                client_properties=properties, mechanism=mechanism, response=response
            )
        )
        self.frame_max = min(tune.frame_max or self.frame_max, self.frame_max)
        theirs, ours = int(tune.heartbeat), self.heartbeat
        # 0 from us turns heartbeats off; 0 from the broker leaves ours
        self.heartbeat = 0 if not ours else min(theirs, ours) if theirs else ours
        self.channel_max = min(int(tune.channel_max) or 65535, 65535)
        self.write(
            pframe.marshal(
                commands.Connection.TuneOk(self.channel_max, self.frame_max, self.heartbeat), 0
            )
        )
        await self._call(commands.Connection.Open(virtual_host=vhost))
        if self.heartbeat:
            self._ticker = self.loop.call_later(self.heartbeat / 2, self._tick)

    def _expect(self) -> asyncio.Future[Any]:
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self._waiter = waiter
        return waiter

    async def _call(self, method: Any) -> Any:
        waiter = self._expect()
        self.write(pframe.marshal(method, 0))
        return await waiter

    async def channel(self, *, confirms: bool = False, prefetch: int | None = None) -> WireChannel:
        """A new channel, in confirm mode if asked, with a prefetch if given."""
        number = self._free_number()
        ch = self.channels[number] = WireChannel(self, number)
        try:
            await ch.call(commands.Channel.Open())
            if confirms:
                await ch.confirm_select()
            if prefetch is not None:
                await ch.qos(prefetch)
        except BaseException:
            ch._abandon(WireError(f"channel {ch.number} not set up"))
            raise
        return ch

    def _free_number(self) -> int:
        """The next channel number not in use, from after the last one given,
        wrapping round below ``channel_max`` (numbers are reused, as they must
        be on a connection that outlives 65,535 channels)."""
        for n in range(self._next_channel, self._next_channel + self.channel_max):
            number = (n - 1) % self.channel_max + 1
            if number not in self.channels:
                self._next_channel = number + 1
                return number
        raise WireError(f"all {self.channel_max} channels of the connection are in use")

    # ------------------------------------------------------------------ heartbeats
    def _tick(self) -> None:
        """Every half interval: a heartbeat if nothing was written; dropped
        after two intervals of hearing nothing (a half-open connection)."""
        if self.is_closed:
            return
        if not self._wrote:
            self.write(HEAD.pack(8, 0, 0) + FRAME_END)
        self._silent_ticks = 0 if self._heard else self._silent_ticks + 1
        self._wrote = self._heard = False
        if self._silent_ticks >= 4:
            self._lost(WireError(f"no frame from the broker in {2 * self.heartbeat} s"))
            self.abort()
            return
        self._ticker = self.loop.call_later(self.heartbeat / 2, self._tick)

    # ------------------------------------------------------------------ frames
    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self.is_closed:
            raise WireError("the connection is closed")
        transport.write(data)
        self._wrote = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass)
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(WireError(f"connection lost: {exc!r}" if exc else "connection closed"))

    def data_received(self, data: bytes) -> None:
        self._heard = True
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        view = memoryview(buf)
        try:
            while n - pos >= 8:
                kind, number, size = HEAD.unpack_from(buf, pos)
                end = pos + 7 + size
                if end >= n:
                    break
                if buf[end] != 0xCE:
                    raise WireError(f"a frame that does not end in 0xCE at {end}")
                self._frame(kind, number, view[pos + 7 : end])
                pos = end + 1
        except Exception as exc:  # a malformed frame: nothing after it can be trusted
            self._lost(WireError(f"unreadable frame: {exc!r}"))
            self.abort()
        finally:
            view.release()
        del buf[:pos]

    def _frame(self, kind: int, number: int, payload: memoryview) -> None:
        if kind == 8:
            return  # a heartbeat: hearing it is all it is for
        if number == 0:
            if kind == 1:
                self._connection_method(payload)
            return
        ch = self.channels.get(number)
        if ch is None:
            return  # a channel closed by us: its last frames
        if kind == 1:
            ch.method_frame(payload)
        elif kind == 2:
            ch.header_frame(payload)
        elif kind == 3:
            ch.body_frame(payload)

    def _connection_method(self, payload: memoryview) -> None:
        frame = HEAD.pack(1, 0, len(payload)) + bytes(payload) + FRAME_END
        method = pframe.unmarshal(frame)[2]
        if isinstance(method, commands.Connection.Close):
            with contextlib.suppress(WireError):
                self.write(pframe.marshal(commands.Connection.CloseOk(), 0))
            self._lost(WireClosed(method.reply_code or 0, str(method.reply_text)))
            self.abort()
        elif isinstance(method, commands.Connection.Blocked):
            self.blocked = str(method.reason) or "blocked"
        elif isinstance(method, commands.Connection.Unblocked):
            self.blocked = None
        else:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(method)

    def _lost(self, exc: BaseException) -> None:
        if self.is_closed:
            return
        self.closed.set_result(exc)
        if self._ticker is not None:
            self._ticker.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        for ch in list(self.channels.values()):
            ch._closed(exc)

    # ------------------------------------------------------------------ closing
    async def close(self, timeout: float = 5.0) -> None:
        """Close cleanly (Connection.Close, then its CloseOk), bounded."""
        if not self.is_closed:
            with contextlib.suppress(WireError, TimeoutError):
                await asyncio.wait_for(
                    self._call(
                        commands.Connection.Close(
                            reply_code=200, reply_text="bye", class_id=0, method_id=0
                        )
                    ),
                    timeout,
                )
            self._lost(WireError("connection closed"))
        self.abort()

    def abort(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._ticker is not None:
            self._ticker.cancel()


__all__ = [
    "Delivered",
    "Nacked",
    "OnDelivery",
    "Returned",
    "WireChannel",
    "WireClosed",
    "WireConnection",
    "WireError",
]
