"""A TCP fault proxy: listens on 127.0.0.1, forwards to one upstream host:port,
and injects network faults on command, at run time::

    async with FaultProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        proxy.set_latency(0.05, jitter=0.02)   # every chunk, each direction
        proxy.set_bandwidth(64 * 1024)         # bytes per second per direction
        proxy.reset(mid_frame=True)            # RST every connection mid-chunk
        proxy.blackhole()                      # half-open: accept, read, forward nothing
        proxy.refuse()                         # the broker down: RST every connection, new ones too
        proxy.recover()                        # back to a clean pipe

Each accepted connection gets one upstream connection and two pumps (one per
direction). A pump reads chunks as they come and hands them to a writer that
delivers them in order, each no earlier than its arrival plus the latency and a
random jitter (seeded), at no more than the bandwidth cap.

``blackhole`` is a network partition seen from both ends: connections stay
open and the proxy keeps reading (the sender's writes succeed), but nothing is
forwarded; connections accepted meanwhile are not connected upstream. What was
read is held, in order, and ``recover`` delivers it, as TCP retransmission does
when a partition heals; a peer that gave up in the meantime closes its side and
the proxy closes the other.

``reset`` aborts connections with a TCP RST (``SO_LINGER`` 0). With
``mid_frame=True`` each connection first forwards half of the next chunk it
carries (either direction), so the peer sees a frame cut in the middle; a
connection that carries nothing for ``idle_reset`` seconds is reset anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

_CHUNK = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class ProxyStats:
    accepted: int = 0  # connections accepted since start
    active: int = 0  # connections open now
    resets: int = 0  # connections aborted with RST
    bytes_up: int = 0  # forwarded client -> upstream
    bytes_down: int = 0  # forwarded upstream -> client


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Abort ``writer``'s connection with a TCP RST."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    cut_armed: bool = False
    cut_deadline: float = 0.0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    graceful: bool = False  # one side closed cleanly: close, do not reset

    def rst(self) -> None:
        _rst(self.client_w)
        _rst(self.upstream_w)
        self.closed.set()

    def finish(self) -> None:
        if not self.graceful:
            self.rst()
            return
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                w.close()


class FaultProxy:
    """A TCP proxy in front of ``host:port`` that injects faults on command."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        seed: int = 0,
        idle_reset: float = 1.0,
        listen_port: int = 0,
    ) -> None:
        self.upstream = (host, port)
        self.listen_port = listen_port  # 0: any free port
        self.stats = ProxyStats()
        self.idle_reset = idle_reset
        self._rng = random.Random(seed)
        self._latency = 0.0
        self._jitter = 0.0
        self._bandwidth: float | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._refusing = False
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.get_running_loop().create_task(self._reset_idle())
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in list(self._conns):
            conn.rst()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ faults
    def set_latency(self, latency: float, jitter: float = 0.0) -> None:
        """Delay every chunk by ``latency`` plus a uniform ``[0, jitter)`` seconds."""
        self._latency, self._jitter = latency, jitter

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap each direction of each connection; ``None`` lifts the cap."""
        self._bandwidth = bytes_per_second

    def blackhole(self) -> None:
        """Half-open: keep reading, forward nothing, connect nothing upstream."""
        self._open.clear()

    def reset(self, *, mid_frame: bool = True) -> int:
        """RST every open connection (after half a chunk when ``mid_frame``);
        returns how many were hit."""
        conns = list(self._conns)
        for conn in conns:
            if mid_frame:
                conn.cut_armed = True
                conn.cut_deadline = time.monotonic() + self.idle_reset
            else:
                self.stats.resets += 1
                conn.rst()
        return len(conns)

    def refuse(self) -> None:
        """A broker that is down: RST every open connection, and each one
        accepted from now on, until :meth:`recover`."""
        self._refusing = True
        self.reset(mid_frame=False)

    def recover(self) -> None:
        """No latency, no cap, no blackhole, no refusing; held data is delivered."""
        self._latency = self._jitter = 0.0
        self._bandwidth = None
        self._refusing = False
        self._open.set()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------------ plumbing
    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reset_idle(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for conn in list(self._conns):
                if conn.cut_armed and now >= conn.cut_deadline:
                    conn.cut_armed = False
                    self.stats.resets += 1
                    conn.rst()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(client_r=reader, client_w=writer)
        self._conns.add(conn)
        self.stats.accepted += 1
        self.stats.active += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if self._refusing:
            self.stats.resets += 1
        try:
            if self._refusing:
                return  # the finally resets it
            await self._serve(conn)
        except asyncio.CancelledError:
            pass  # closing the proxy; a cancelled server callback only logs noise
        finally:
            self._conns.discard(conn)
            self.stats.active -= 1
            conn.finish()

    async def _serve(self, conn: _Conn) -> None:
        up_queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        reader_up = self._spawn(self._read(conn, conn.client_r, up_queue))
        await self._open.wait()  # a partition: the connect itself is held
        if conn.closed.is_set():
            reader_up.cancel()
            return
        try:
            up_r, conn.upstream_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            reader_up.cancel()
            return  # upstream refuses: the client sees a reset
        down_queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        pumps = [
            reader_up,
            self._spawn(self._read(conn, up_r, down_queue)),
            self._spawn(self._write(conn, up_queue, conn.upstream_w, up=True)),
            self._spawn(self._write(conn, down_queue, conn.client_w, up=False)),
        ]
        await conn.closed.wait()
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _read(
        self, conn: _Conn, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        last_due = 0.0
        try:
            while chunk := await reader.read(_CHUNK):
                due = time.monotonic() + self._latency + self._rng.uniform(0, self._jitter)
                last_due = max(last_due, due)  # delivery keeps the order of reading
                queue.put_nowait((last_due, chunk))
        except OSError:
            conn.closed.set()
            return
        queue.put_nowait((last_due, b""))  # end of stream: close the other side

    async def _write(
        self,
        conn: _Conn,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        try:
            while True:
                due, chunk = await queue.get()
                await self._open.wait()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not chunk:
                    conn.graceful = True
                    break
                if conn.cut_armed:
                    conn.cut_armed = False
                    writer.write(chunk[: max(1, len(chunk) // 2)])
                    await writer.drain()
                    self.stats.resets += 1
                    conn.rst()
                    return
                await self._send(writer, chunk)
                if up:
                    self.stats.bytes_up += len(chunk)
                else:
                    self.stats.bytes_down += len(chunk)
        except (OSError, ConnectionError):
            pass
        conn.closed.set()

    async def _send(self, writer: asyncio.StreamWriter, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            bw = self._bandwidth
            step = len(view) if bw is None else max(1, int(bw / 20))
            if bw is not None:  # pace before sending: n bytes take at least n / bw
                await asyncio.sleep(min(step, len(view)) / bw)
            await self._open.wait()
            writer.write(view[:step])
            await writer.drain()
            view = view[step:]


__all__ = ["FaultProxy", "ProxyStats"]
