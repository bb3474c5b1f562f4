"""``amqp://``: RabbitMQ, the data path on a protocol connection of our own.

Two connections to the same node: aio-pika's, for the topology, the
management of queues, heartbeats and notifications; and one of
:mod:`fleet.transport._amqp_wire`, for the path of every request: requests
and replies are published on a confirm channel of it, and every consumer
(work queues, inboxes, heartbeat and notification subscribers, the dead
letters' tap) consumes on a channel of its own on it. There a delivery
reaches its consumer, and a confirm its publisher, in the turn of the event
loop that read their frames (aiormq, under aio-pika, passes each frame
through tasks and queues of its own). Losing either connection reconnects both.

Topology (declared on connect and again after every reconnect):

- work queues ``fleet.<model>.<online|batch>``: durable quorum queues, bounded
  with ``reject-publish`` (a full queue nacks the publisher: :class:`Overloaded`),
  a delivery limit, dead-lettered through the fanout exchange ``fleet.dlx`` into
  the quorum queue ``fleet.dead-letter``;
- replies: one classic, exclusive, auto-delete queue per inbox, named by the
  client (``fleet.inbox.<32 hex>``) so that it comes back under the same
  address after a reconnect;
- heartbeats: the fanout exchange ``fleet.heartbeats``, one exclusive queue per
  subscriber.

The connection is a plain one with a reconnection loop of our own. A URL may
name the nodes of a cluster, ``amqp://user:pass@h1:p1,h2:p2,h3:p3/``: a
connect tries them in turn, and a reconnect starts from the node after the one
lost. After a reconnect the topology is declared again, every inbox and
consumer is started again on a fresh channel, and only then are the reconnect
listeners called.
Each consumer has a channel of its own; a delivery remembers that channel and
settling it once the channel is gone is a no-op (the broker redelivers).

Errors: a publish the broker returns (no such queue; ``Returned``) is :class:`ModelNotFound`,
one it nacks with the queue full :class:`Overloaded`, one it nacks with room in
the queue (a quorum queue whose leader is changing), a timeout or a lost
connection :class:`Unavailable`, a declaration that clashes with an existing queue
:class:`ConfigError`, and so is a name the user's permissions do not cover.
At connect, a login the broker refuses (``ACCESS_REFUSED``), a broker
certificate we do not trust and a client certificate the broker refuses are
:class:`AuthenticationFailed`, a TLS handshake with something that is no TLS
listener a :class:`ConfigError`: none of them is retried.

``depth`` reads in-flight counts from the management API
(``?management_url=`` in the URL, else ``$FLEET_MANAGEMENT_URL``, else
``http://host:15672`` for ``amqp://`` and ``https://host:15671`` for
``amqps://``, with credentials of its own where given: see
:mod:`fleet.transport._amqp_management`); without it ``in_flight`` is ``None``.

TLS: ``amqps://`` takes aiormq's URL parameters ``cafile`` (else the system's
CAs), ``capath``, ``cadata`` (base64 DER), ``certfile``/``keyfile`` (a client
certificate: mutual TLS; with ``auth=EXTERNAL`` it is the login, no password)
and ``no_verify_ssl=1``. The context is made here at every connect, so that a
file that cannot be read is a :class:`ConfigError`, not a connection retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiohttp
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from aiormq.exceptions import (
    AuthenticationError,
    ChannelAccessRefused,
    IncompatibleProtocolError,
    ProbableAuthenticationError,
)

from fleet.contract import Priority
from fleet.deadlines import Deadlines
from fleet.errors import (
    AuthenticationFailed,
    ConfigError,
    FleetError,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from fleet.eventloop import cancel_and_wait
from fleet.logging import get_logger
from fleet.redact import redact_url
from fleet.settings import BROKER, resolve_password
from fleet.transport._amqp_consumer import (
    AmqpDelivery,
    Declare,
    OnMessage,
    Subscription,
    bytes_handler,
    run_handler,
)
from fleet.transport._amqp_management import management_api
from fleet.transport._amqp_wire import (
    Delivered,
    Nacked,
    Returned,
    WireChannel,
    WireClosed,
    WireConnection,
)
from fleet.transport.base import (
    DEAD_LETTER,
    DEAD_LETTER_TAP,
    HEARTBEATS,
    REPLY_PREFIX,
    Capability,
    Consumer,
    DeadLetterTap,
    Depth,
    OnBytes,
    OnDelivery,
    Resource,
    Transport,
    TransportOptions,
    check_destination,
    check_reply_address,
    check_size,
    new_reply_address,
    queue_name,
)
from fleet.transport.spec import TransportSpec

log = get_logger("fleet.transport.amqp")

DLX = "fleet.dlx"
BROKER_MAX_MESSAGE_BYTES = 128 << 20
"""RabbitMQ's ``max_message_size`` default (3.10 on); a broker configured lower
needs ``?max_message_bytes=`` to match."""
DEAD_LETTER_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-max-length": 10_000,
    "x-overflow": "drop-head",
}
# query parameters aiormq understands; every other one is ours or unknown
_AMQP_QUERY = frozenset(
    {"heartbeat", "name", "auth", "cafile", "capath", "cadata", "keyfile", "certfile"}
    | {"no_verify_ssl"}
)
_CERTIFICATE_ALERT = re.compile(
    r"ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_\w+|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED)"
)
"""TLS alerts a server sends when it refuses the client's certificate."""
_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
"""A handshake cut short: a broker going away, retried like any lost connection."""
_RESET = (ConnectionResetError, BrokenPipeError, EOFError, IncompatibleProtocolError)
_DIAGNOSE_TIMEOUT = 2.0  # seconds for the second look at a reset with a client certificate
_MANAGEMENT_TIMEOUT = 1.0  # seconds per management API call
_MANAGEMENT_RETRY = 30.0  # seconds to leave an unreachable management API alone
_HEARTBEAT = 60  # seconds, as aio-pika's: the URL's ?heartbeat= changes both


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class AmqpOptions(TransportOptions):
    """The common options, plus where the management API is."""

    management_url: str | None = None
    """Base URL of the RabbitMQ management API, for ``depth``'s in-flight
    counts, with its own user (and password) where it has one (default:
    ``$FLEET_MANAGEMENT_URL``, else ``http://host:15672`` for ``amqp://`` and
    ``https://host:15671`` for ``amqps://``)."""
    quorum_group_size: int | None = None
    """Replicas of each new work queue (``x-quorum-initial-group-size``);
    default: the broker's own (``quorum_queue.initial_cluster_size``, else
    every node). Queues that exist keep theirs: RabbitMQ refuses to redeclare
    a queue with another group size, so change it on a new fleet only."""

    nack_failover: float = 5.0
    """Seconds the node a transport is connected to may keep nacking publishes
    to queues with room (a quorum queue whose copy there lost its leader)
    before a transport given several nodes moves to the next one."""

    COUNTS: ClassVar[tuple[str, ...]] = TransportOptions.COUNTS

    def __post_init__(self) -> None:
        TransportOptions.__post_init__(self)
        if self.nack_failover <= 0:
            raise ConfigError("transport option nack_failover must be above 0 seconds")
        if self.quorum_group_size is not None and self.quorum_group_size < 1:
            raise ConfigError("transport option quorum_group_size must be at least 1")


def work_queue_arguments(options: TransportOptions) -> dict[str, Any]:
    """Arguments of every work queue; a declaration with others fails (406).

    RabbitMQ counts both limits one past ours: a quorum queue accepts a publish
    while it holds at most ``x-max-length`` ready messages, and dead-letters a
    message once it has been returned more than ``x-delivery-limit`` times."""
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-max-length": options.max_queue_length - 1,
        "x-overflow": "reject-publish",
        "x-delivery-limit": options.delivery_limit - 1,
        "x-dead-letter-exchange": DLX,
    }
    group = getattr(options, "quorum_group_size", None)
    if group is not None:
        arguments["x-quorum-initial-group-size"] = group
    return arguments


def tls_context(query: Mapping[str, str]) -> ssl.SSLContext:
    """The TLS context of an ``amqps://`` URL's parameters (``cafile``,
    ``capath``, ``cadata``, ``certfile``/``keyfile``, ``no_verify_ssl``), as
    aiormq would make it; a file that cannot be read or used is a
    :class:`ConfigError` that names it."""
    files = {k: query[k] for k in ("cafile", "capath", "certfile", "keyfile") if query.get(k)}
    try:
        cadata = query.get("cadata")
        context = ssl.create_default_context(
            cafile=files.get("cafile"),
            capath=files.get("capath"),
            cadata=b64decode(cadata) if cadata else None,
        )
        if "certfile" in files:
            context.load_cert_chain(files["certfile"], files.get("keyfile"))
    except (OSError, ssl.SSLError, ValueError) as exc:
        named = ", ".join(f"{k}={v}" for k, v in files.items()) or "the system's CAs"
        raise ConfigError(f"amqps:// TLS settings ({named}): {exc}") from None
    if query.get("no_verify_ssl", "0") != "0":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def node_urls(url: str) -> list[str]:
    """The URL of each node ``url`` names: ``amqp://user:pass@h1:p1,h2:p2/vhost``
    names the nodes of one cluster, with the same login, vhost and parameters;
    a URL with one host comes back as it is."""
    parts = urlsplit(url)
    login, at, hosts = parts.netloc.rpartition("@")
    urls = []
    for host in hosts.split(","):
        if not host.strip():
            raise ConfigError(f"RabbitMQ URL {redact_url(url)!r} names an empty host")
        urls.append(urlunsplit(parts._replace(netloc=f"{login}{at}{host.strip()}")))
    return urls


def _host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def connect_refusal(exc: BaseException, where: str) -> ConfigError | None:
    """What a failed connect means when retrying it cannot help: the broker
    refused the login (:class:`AuthenticationFailed`), one side refused the
    other's certificate (:class:`AuthenticationFailed`), or the port speaks no
    TLS (:class:`ConfigError`). ``None``: something else (a broker down).
    ``where`` names the broker, its password redacted."""
    for err in _causes(exc):
        if isinstance(err, ProbableAuthenticationError):
            reply = err.args[0] if err.args else "ACCESS_REFUSED"
            return AuthenticationFailed(f"{where} refused the login: {reply}")
        if isinstance(err, AuthenticationError):
            offered = err.args[0] if err.args else "?"
            return AuthenticationFailed(
                f"{where} does not offer the login mechanism ?auth= asks for; it offers {offered}"
            )
        if isinstance(err, ssl.SSLCertVerificationError):
            return AuthenticationFailed(
                f"{where}: its TLS certificate is not trusted ({err.verify_message});"
                " ?cafile= names the CA that signed it"
            )
        if isinstance(err, ssl.SSLError) and not isinstance(err, _CUT_SHORT):
            reason = err.reason or str(err)
            if _CERTIFICATE_ALERT.search(reason):
                return AuthenticationFailed(
                    f"{where} refused our client certificate ({reason}): ?certfile= must be"
                    " signed by a CA the broker trusts"
                )
            return ConfigError(
                f"{where}: the TLS handshake failed ({reason}); is that port RabbitMQ's TLS"
                " listener (5671 by default), not its amqp:// one?"
            )
    return None


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Library errors become fleet errors here."""
    try:
        yield
    except FleetError:
        raise
    except ChannelPreconditionFailed as exc:
        raise ConfigError(f"{what}: declared elsewhere with other arguments ({exc})") from exc
    except ChannelNotFoundEntity as exc:
        raise ModelNotFound(f"{what}: {exc}") from exc
    except ChannelAccessRefused as exc:
        raise ConfigError(f"{what}: the user's permissions do not allow it ({exc})") from exc
    except WireClosed as exc:  # the same refusals, on the protocol connection
        if exc.reply_code == 406:
            raise ConfigError(f"{what}: declared elsewhere with other arguments ({exc})") from exc
        if exc.reply_code == 404:
            raise ModelNotFound(f"{what}: {exc}") from exc
        if exc.reply_code == 403:
            raise ConfigError(f"{what}: the user's permissions do not allow it ({exc})") from exc
        raise Unavailable(f"{what}: {exc!r}") from exc
    except CONNECTION_EXCEPTIONS as exc:  # includes TimeoutError (an OSError)
        raise Unavailable(f"{what}: {exc!r}") from exc


class AmqpTransport(Transport, DeadLetterTap):
    scheme = "amqp"
    capabilities = frozenset({Capability.DEAD_LETTER_TAP})
    options: AmqpOptions

    def __init__(self, url: str, options: TransportOptions) -> None:
        super().__init__(url, AmqpOptions.extend(options))
        # a URL naming only the user: $FLEET_BROKER_PASSWORD[_FILE] (never argv)
        url = resolve_password(url, BROKER)
        parts = urlsplit(url)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k in _AMQP_QUERY])
        self._amqp_url = urlunsplit(parts._replace(query=query, fragment=""))
        self._amqp_urls = node_urls(self._amqp_url)
        self._node = 0  # the index in _amqp_urls of the node to try first
        self._nacked_since: float | None = None  # first of the nacks with room in a row
        self._confirm_deadlines = Deadlines()  # fails a confirm not come in publish_timeout
        self._safe_url = urlunsplit(
            parts._replace(netloc=parts.netloc.rpartition("@")[2], query="")
        )
        # the user stays, the password is masked: who was refused
        self._login_url = redact_url(urlunsplit(parts._replace(query="", fragment="")))
        self._tls_query = dict(parse_qsl(parts.query)) if parts.scheme == "amqps" else None
        self._vhost = unquote(parts.path.strip("/")) or "/"
        self._management_api = management_api(url, self.options.management_url)
        self._management = self._management_api.base
        self._auth_header = self._management_api.headers
        self._management_ssl = self._management_api.ssl_context()
        self._management_down_until = 0.0
        self._conn: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None  # topology, heartbeats, notifications
        # requests, replies and consumers: the protocol connection (_amqp_wire)
        self._wire: WireConnection | None = None
        self._wire_publisher: WireChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._closing = False
        self._queues: set[tuple[str, Priority]] = set()
        self._destinations: set[str] = set()  # notification exchanges declared
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnector: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        conn, wire = self._conn, self._wire
        return (
            self._up.is_set()
            and conn is not None
            and conn.connected.is_set()
            and wire is not None
            and not wire.is_closed
        )

    async def connect(self) -> None:
        if self.connected:
            return
        self._closing = False
        try:
            with _translated(f"connect to RabbitMQ at {self._safe_url}"):
                await self._open()
        except Unavailable as exc:
            where = f"RabbitMQ at {self._login_url}"
            refusal = connect_refusal(exc, where)
            if refusal is None and any(isinstance(e, _RESET) for e in _causes(exc)):
                refusal = await self._diagnose(where)
            if refusal is not None:
                raise refusal from exc.__cause__
            raise

    async def _diagnose(self, where: str) -> ConfigError | None:
        """A second look at a connection reset during connect, with a client
        certificate: under TLS 1.3 the client's handshake is over before the
        broker checks that certificate, and the reset our first bytes cause
        can overtake the broker's refusal (an alert). So: handshake once
        more, send nothing, read; a refusal comes back as that alert."""
        query = self._tls_query
        if query is None or not query.get("certfile"):
            return None
        parts = urlsplit(self._amqp_urls[self._node])
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(min(self.options.publish_timeout, _DIAGNOSE_TIMEOUT)):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, parts.port or 5671, ssl=tls_context(query)
                )
                await reader.read(1)
        except ssl.SSLError as exc:
            return connect_refusal(exc, where)
        except (OSError, TimeoutError):
            return None  # not a refusal: the broker's own trouble, retried
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
        return None

    async def _open(self) -> None:
        """Open the connection on the first node that answers, trying the URL's
        nodes in turn from the one last used (after a lost connection, the
        next one); a login or certificate refused is not tried further."""
        count = len(self._amqp_urls)
        for tried in range(1, count + 1):
            try:
                await self._open_node(self._amqp_urls[self._node])
            except CONNECTION_EXCEPTIONS as exc:
                if tried == count or connect_refusal(exc, "") is not None:
                    raise
                log.info(
                    "RabbitMQ node unreachable; trying the next",
                    node=_host(self._amqp_urls[self._node]),
                    error=repr(exc),
                )
                self._node = (self._node + 1) % count
            else:
                return

    async def _open_node(self, url: str) -> None:
        """Connect, declare the topology, start every subscription: all or nothing."""
        context = None if self._tls_query is None else tls_context(self._tls_query)
        timeout = self.options.publish_timeout
        conn = await aio_pika.connect(url, timeout=timeout, ssl_context=context)
        wire: WireConnection | None = None
        try:
            publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
            await self._declare_topology(publisher)
            wire = await self._open_wire(url, context)
            wire_publisher = await wire.channel(confirms=True)
            for sub in list(self._subs):
                await sub.start(wire)
            if not conn.connected.is_set() or wire.is_closed:
                raise ConnectionError("connection lost while restoring it")
        except BaseException:
            if wire is not None:
                await wire.close()
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await conn.close()
            raise
        self._conn, self._publisher = conn, publisher
        self._wire, self._wire_publisher = wire, wire_publisher
        conn.close_callbacks.add(self._connection_closed)
        wire.closed.add_done_callback(lambda done: self._connection_closed(wire, done.result()))
        self._up.set()

    async def _open_wire(self, url: str, context: ssl.SSLContext | None) -> WireConnection:
        """The protocol connection to the node of ``url``, logged in as aio-pika is."""
        parts = urlsplit(url)
        query = {k.lower(): v for k, v in parse_qsl(parts.query)}
        return await WireConnection.open(
            parts.hostname or "localhost",
            parts.port or (5671 if context is not None else 5672),
            login=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            external=query.get("auth", "").upper() == "EXTERNAL",
            vhost=self._vhost,
            ssl_context=context,
            heartbeat=int(query.get("heartbeat", _HEARTBEAT)),
            name=query.get("name"),
            timeout=self.options.publish_timeout,
        )

    def _connection_closed(self, conn: object, exc: BaseException | None) -> None:
        """aio-pika's connection or the protocol one lost: both go, both come back."""
        if (conn is not self._conn and conn is not self._wire) or self._closing:
            return
        log.warning("lost the connection to RabbitMQ; reconnecting", error=repr(exc))
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        """Leave the current node and reconnect (to the next one, where there
        are several), unless a reconnection is already under way."""
        self._up.clear()
        if self._reconnector is None:
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            old, self._conn, self._publisher = self._conn, None, None
            wire, self._wire, self._wire_publisher = self._wire, None, None
            self._node = (self._node + 1) % len(self._amqp_urls)  # that node may be going away
            if wire is not None:
                await wire.close(timeout=1.0)
            if old is not None:
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await old.close()
            attempt = 0
            while not self._closing:
                await asyncio.sleep(self.options.reconnect_interval)
                attempt += 1
                try:
                    await self._open()
                except ConfigError as exc:  # TLS files that cannot be read (any more)
                    log.warning("reconnection attempt failed", attempt=attempt, error=exc.message)
                    continue
                except CONNECTION_EXCEPTIONS as exc:
                    refusal = connect_refusal(exc, f"RabbitMQ at {self._login_url}")
                    if refusal is not None:  # settings changed under us: say so every time
                        log.warning("reconnection refused", attempt=attempt, error=refusal.message)
                        continue
                    level = log.info if attempt == 1 else log.debug
                    level("reconnection attempt failed", attempt=attempt, error=repr(exc))
                    continue
                except Exception:  # a bug must not end the reconnecting for good
                    log.exception("reconnection attempt failed unexpectedly", attempt=attempt)
                    continue
                log.info("reconnected to RabbitMQ", url=self._safe_url, attempts=attempt)
                await self._fire_reconnected()
                return
        finally:
            self._reconnector = None

    async def close(self) -> None:
        self._closing = True
        self._up.clear()
        if self._reconnector is not None:
            await cancel_and_wait(self._reconnector)
        subs, self._subs = self._subs, []
        for sub in subs:
            sub.cancelled = True
            await sub.close()
        conn, self._conn, self._publisher = self._conn, None, None
        wire, self._wire, self._wire_publisher = self._wire, None, None
        if wire is not None:
            await wire.close()
        self._confirm_deadlines.close()
        if conn is not None:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await conn.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _ready(self) -> AbstractConnection:
        """The live connection; waits up to ``publish_timeout`` for one."""
        if self._closing:
            raise Unavailable("transport is closed")
        if not self._up.is_set():
            try:
                await asyncio.wait_for(self._up.wait(), self.options.publish_timeout)
            except TimeoutError:
                raise Unavailable(f"RabbitMQ at {self._safe_url} is unreachable") from None
        if self._conn is None:
            raise Unavailable("transport is closed")
        return self._conn

    @contextlib.asynccontextmanager
    async def _scratch(self, what: str) -> AsyncIterator[AbstractChannel]:
        """A throwaway channel: a failed passive declare closes it, nothing else."""
        conn = await self._ready()
        with _translated(what):
            channel = await conn.channel(publisher_confirms=False)
            try:
                yield channel
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                        await channel.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ subscriptions
    async def _subscribe(
        self, label: str, declare: Declare, on_message: OnMessage, *, prefetch: int | None
    ) -> Subscription:
        """Start a consumer now, and again after every reconnect."""
        await self._ready()
        wire = self._wire
        if wire is None:
            raise Unavailable("transport is closed")
        sub = Subscription(self, label, declare, on_message, prefetch=prefetch)
        with _translated(f"consume from {label}"):
            try:
                await sub.start(wire)
            except BaseException:
                await sub.close()
                raise
        self._subs.append(sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _restart_soon(self, sub: Subscription) -> None:
        """A channel closed or a consumer cancelled while the connection is up."""
        if self._closing or not self._up.is_set() or sub.restarting:
            return  # the reconnection restores it
        sub.restarting = True
        self._spawn(self._restart(sub, sub.channel))

    async def _restart(self, sub: Subscription, channel: WireChannel | None) -> None:
        try:
            while not (self._closing or sub.cancelled):
                await asyncio.sleep(self.options.reconnect_interval)
                conn = self._wire
                if conn is None or not self._up.is_set() or sub.channel is not channel:
                    return  # a reconnection took over
                try:
                    if channel is None or channel.is_closed:
                        await sub.start(conn)
                    else:
                        await sub.consume()
                except CONNECTION_EXCEPTIONS as exc:
                    log.warning("could not restart a consumer", queue=sub.label, error=repr(exc))
                    channel = sub.channel
                    continue
                log.info("consumer restarted", queue=sub.label)
                return
        finally:
            sub.restarting = False

    # ------------------------------------------------------------------ topology
    async def _declare_topology(self, channel: AbstractChannel) -> None:
        timeout = self.options.publish_timeout
        dlx = await channel.declare_exchange(
            DLX, aio_pika.ExchangeType.FANOUT, durable=True, timeout=timeout
        )
        dead = await channel.declare_queue(
            DEAD_LETTER, durable=True, arguments=DEAD_LETTER_ARGUMENTS, timeout=timeout
        )
        await dead.bind(dlx, timeout=timeout)
        await channel.declare_exchange(
            HEARTBEATS, aio_pika.ExchangeType.FANOUT, durable=True, timeout=timeout
        )
        for model, priority in sorted(self._queues):
            await self._declare_work(channel, queue_name(model, priority))

    async def topology(self, models: Sequence[str]) -> list[Resource]:
        work = work_queue_arguments(self.options)
        inbox = f"{REPLY_PREFIX}<32 hex digits>"
        return [
            _exchange(DLX, "dead letters: where work queues send what they give up on"),
            _queue(DEAD_LETTER, DEAD_LETTER_ARGUMENTS, "dead letters, oldest dropped past 10,000"),
            _binding(DLX, DEAD_LETTER),
            _exchange(HEARTBEATS, "worker heartbeats; each reader binds a queue of its own"),
            _queue(
                DEAD_LETTER_TAP,
                DEAD_LETTER_ARGUMENTS,
                "dead letters again, for workers with a result store (jobs end failed)",
            ),
            _binding(DLX, DEAD_LETTER_TAP),
            *(
                _queue(queue_name(m, p), work, f"{p.label} requests for {m}")
                for m in models
                for p in Priority
            ),
            Resource(
                kind="queue",
                name=inbox,
                settings={"exclusive": "true", "auto_delete": "true"},
                command="",
                note="one per client process, exclusive to its connection: made by the client",
            ),
        ]

    async def _declare_work(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        return await channel.declare_queue(
            name,
            durable=True,
            arguments=work_queue_arguments(self.options),
            timeout=self.options.publish_timeout,
        )

    async def declare_model(self, model: str) -> None:
        names = [queue_name(model, p) for p in Priority]
        async with self._scratch(f"declare queues of model {model!r}") as channel:
            for name in names:
                await self._declare_work(channel, name)
        self._queues.update((model, p) for p in Priority)

    # ------------------------------------------------------------------ publishing
    def _up_now(self) -> bool:
        return self._up.is_set() and not self._closing

    async def _publish_channel(self) -> AbstractChannel:
        publisher = self._publisher
        if publisher is not None and not publisher.is_closed and self._up_now():
            return publisher  # the usual case: no lock to take
        conn = await self._ready()
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.is_closed:
                self._publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
            return self._publisher

    async def _publish_wire(self) -> WireChannel:
        publisher = self._wire_publisher
        if publisher is not None and not publisher.is_closed and self._up_now():
            return publisher  # the usual case: no lock to take
        await self._ready()
        async with self._publisher_lock:
            wire = self._wire
            if wire is None:
                raise Unavailable("transport is closed")
            if self._wire_publisher is None or self._wire_publisher.is_closed:
                self._wire_publisher = await wire.channel(confirms=True)
            return self._wire_publisher

    async def _publish(self, routing_key: str, body: bytes, *, persistent: bool) -> None:
        """Publish on the default exchange (mandatory) and wait for the confirm,
        on the protocol connection. A message the broker returns raises
        ``Returned``, one it nacks ``Nacked``, no confirm in time ``TimeoutError``."""
        channel = await self._publish_wire()
        confirm = channel.publish(routing_key, body, persistent=persistent)
        # awaited where it is (wait_for would resolve a future of its own from
        # the confirm's, a turn of the loop later), its deadline an entry on
        # one timer for every publish (asyncio.timeout makes a loop timer and
        # cancels it on each)
        if not confirm.done():
            deadline = time.monotonic() + self.options.publish_timeout
            self._confirm_deadlines.add(deadline, confirm, channel.unconfirmed)
        await confirm

    @property
    def max_message_bytes(self) -> int:
        """The option, capped at the broker's ``max_message_size`` default."""
        return min(self.options.max_message_bytes, BROKER_MAX_MESSAGE_BYTES)

    async def publish_request(self, model: str, priority: Priority, body: bytes) -> None:
        name = queue_name(model, priority)
        check_size(body, self.max_message_bytes, "request")
        try:
            await self._publish(name, body, persistent=True)
            self._nacked_since = None
        except Returned as exc:  # no queue of that name
            raise ModelNotFound(f"no worker has declared queue {name!r}") from exc
        except Nacked as exc:
            raise await self._nacked(name) from exc
        except CONNECTION_EXCEPTIONS as exc:
            raise Unavailable(f"publish to {name!r} failed: {exc!r}") from exc

    async def _nacked(self, name: str) -> FleetError:
        """Why the broker nacked a publish to work queue ``name``.

        A full queue nacks (``reject-publish``): :class:`Overloaded`. A quorum
        queue also nacks a publish it could not commit while its leader
        changes; then the queue still has room, and the outage is
        :class:`Unavailable` (retriable: the client tries again)."""
        try:
            ready, _ = await self._counts(name)
        except FleetError as exc:
            return Unavailable(f"publish to {name!r} nacked; its queue did not answer: {exc}")
        if ready >= self.options.max_queue_length:
            return Overloaded(f"queue {name!r} is full")
        self._fail_over_if_stuck()
        return Unavailable(
            f"publish to {name!r} nacked with room in the queue ({ready} ready); "
            "its leader is likely changing"
        )

    def _fail_over_if_stuck(self) -> None:
        """After ``nack_failover`` seconds of nacks with room, move to the next
        node (where there is one): the queue's copy on this node may not learn
        its new leader until the old one is back."""
        now = asyncio.get_running_loop().time()
        if self._nacked_since is None:
            self._nacked_since = now
            return
        if now - self._nacked_since < self.options.nack_failover or len(self._amqp_urls) < 2:
            return
        self._nacked_since = None
        log.warning(
            "RabbitMQ node keeps nacking publishes to queues with room; moving to the next node",
            node=_host(self._amqp_urls[self._node]),
            seconds=self.options.nack_failover,
        )
        self._start_reconnect()

    async def publish_reply(self, reply_to: str, body: bytes) -> None:
        check_reply_address(reply_to)
        check_size(body, self.max_message_bytes, "reply")
        try:
            await self._publish(reply_to, body, persistent=False)
        except Returned:
            log.debug("reply to an inbox that is gone; dropped", reply_to=reply_to)
        except CONNECTION_EXCEPTIONS as exc:  # a nack and no confirm in time included
            raise Unavailable(f"reply to {reply_to!r} failed: {exc!r}") from exc

    async def publish_heartbeat(self, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "heartbeat")
        channel = await self._publish_channel()
        with _translated("publish a heartbeat"):
            exchange = await channel.get_exchange(HEARTBEATS, ensure=False)
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                "",
                mandatory=False,
                timeout=self.options.publish_timeout,
            )

    async def declare_notifications(self, destination: str) -> None:
        check_destination(destination)
        async with self._scratch(f"declare notification exchange {destination!r}") as channel:
            await channel.declare_exchange(
                destination,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                timeout=self.options.publish_timeout,
            )
        self._destinations.add(destination)

    async def publish_notification(self, destination: str, key: str, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "notification")
        if destination not in self._destinations:
            await self.declare_notifications(destination)
        channel = await self._publish_channel()
        try:
            with _translated(f"publish a notification to {destination!r}"):
                exchange = await channel.get_exchange(destination, ensure=False)
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    key,
                    mandatory=False,  # nobody bound: the exchange's owner chose so
                    timeout=self.options.publish_timeout,
                )
        except ModelNotFound as exc:  # deleted under us: declared again next time
            self._destinations.discard(destination)
            raise Unavailable(str(exc)) from exc

    # ------------------------------------------------------------------ consuming
    async def open_inbox(self, on_reply: OnBytes) -> str:
        name = new_reply_address()

        async def declare(channel: WireChannel) -> str:
            await channel.declare_queue(name, exclusive=True, auto_delete=True)
            return name

        await self._subscribe(name, declare, bytes_handler(on_reply), prefetch=None)
        return name

    def _bound(
        self,
        name: str,
        exchange: str,
        *,
        routing_key: str | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> Declare:
        """Declare the queue ``name`` bound to ``exchange``: exclusive and
        deleted with its consumer, or durable with ``arguments`` when given."""

        async def declare(channel: WireChannel) -> str:
            if arguments is None:
                await channel.declare_queue(name, exclusive=True, auto_delete=True)
            else:
                await channel.declare_queue(name, durable=True, arguments=arguments)
            await channel.bind(name, exchange, name if routing_key is None else routing_key)
            return name

        return declare

    async def subscribe_heartbeats(self, on_beat: OnBytes) -> Consumer:
        name = f"{HEARTBEATS}.{uuid.uuid4().hex}"
        declare = self._bound(name, HEARTBEATS)
        return await self._subscribe(name, declare, bytes_handler(on_beat), prefetch=None)

    async def subscribe_notifications(self, destination: str, on_message: OnBytes) -> Consumer:
        await self.declare_notifications(destination)
        name = f"{destination}.{uuid.uuid4().hex}"
        declare = self._bound(name, destination, routing_key="#")
        return await self._subscribe(name, declare, bytes_handler(on_message), prefetch=None)

    async def tap_dead_letters(self, on_delivery: OnDelivery, *, prefetch: int) -> Consumer:
        declare = self._bound(DEAD_LETTER_TAP, DLX, arguments=DEAD_LETTER_ARGUMENTS)

        def on_message(sub: Subscription, message: Delivered) -> None:
            delivery = AmqpDelivery(sub, message, "", Priority.BATCH)
            self._spawn(run_handler(on_delivery, delivery))

        return await self._subscribe(
            DEAD_LETTER_TAP, declare, on_message, prefetch=max(1, prefetch)
        )

    async def consume(
        self, model: str, priority: Priority, on_delivery: OnDelivery, *, prefetch: int
    ) -> Consumer:
        name = queue_name(model, priority)

        async def declare(channel: WireChannel) -> str:
            arguments = work_queue_arguments(self.options)
            await channel.declare_queue(name, durable=True, arguments=arguments)
            return name

        def on_message(sub: Subscription, message: Delivered) -> None:
            self._spawn(run_handler(on_delivery, AmqpDelivery(sub, message, model, priority)))

        sub = await self._subscribe(name, declare, on_message, prefetch=max(1, prefetch))
        self._queues.add((model, priority))
        return sub

    # ------------------------------------------------------------------ operators
    async def depth(self, model: str) -> Depth:
        found: list[str] = []
        ready, consumers = 0, 0
        for priority in Priority:
            name = queue_name(model, priority)
            try:
                waiting, consuming = await self._counts(name)
            except ModelNotFound:
                continue
            found.append(name)
            ready += waiting
            consumers = max(consumers, consuming)
        if not found:
            raise ModelNotFound(f"model {model!r} has no queues")
        in_flight = await self._unacked(found)
        return Depth(model=model, ready=ready, in_flight=in_flight, consumers=consumers)

    async def _counts(self, name: str) -> tuple[int, int]:
        """Queue ``name``'s ready messages and consumers (a passive declare);
        ``ModelNotFound`` where there is no such queue."""
        async with self._scratch(f"depth of {name!r}") as channel:
            queue = await channel.declare_queue(
                name, passive=True, timeout=self.options.publish_timeout
            )
        result = queue.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    async def _unacked(self, names: list[str]) -> int | None:
        """Unacked messages from the management API (sampled by the broker every
        few seconds), or ``None`` when it cannot be reached."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._management_down_until:
            return None
        vhost = quote(self._vhost, safe="")
        total = 0
        try:
            timeout = aiohttp.ClientTimeout(total=_MANAGEMENT_TIMEOUT)
            async with aiohttp.ClientSession(headers=self._auth_header, timeout=timeout) as session:
                for name in names:
                    url = f"{self._management}/api/queues/{vhost}/{quote(name, safe='')}"
                    async with session.get(url, ssl=self._management_ssl or True) as resp:
                        if resp.status == 404:  # not in its statistics yet
                            return None
                        if resp.status in (401, 403):
                            log.warning(
                                "management API refused the credentials; in-flight unknown",
                                url=self._management,
                                user=self._management_api.username,
                                status=resp.status,
                            )
                        resp.raise_for_status()
                        data = await resp.json()
                    total += int(data.get("messages_unacknowledged") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("management API unavailable; in-flight unknown", error=repr(exc))
            self._management_down_until = loop.time() + _MANAGEMENT_RETRY
            return None
        return total

    async def take_dead_letters(self, limit: int = 100) -> list[bytes]:
        out: list[bytes] = []
        async with self._scratch("take dead letters") as channel:
            queue = await channel.declare_queue(
                DEAD_LETTER, passive=True, timeout=self.options.publish_timeout
            )
            last = None
            while len(out) < limit:
                message = await queue.get(fail=False, timeout=self.options.publish_timeout)
                if message is None:
                    break
                out.append(message.body)
                last = message
            if last is not None:  # one frame: acks sent one by one may be lost at the close
                await last.ack(multiple=True)
        return out


def _exchange(name: str, note: str) -> Resource:
    return Resource(
        kind="exchange",
        name=name,
        settings={"type": "fanout", "durable": "true"},
        command=f"rabbitmqadmin declare exchange name={name} type=fanout durable=true",
        note=note,
    )


def _queue(name: str, arguments: Mapping[str, Any], note: str) -> Resource:
    args = json.dumps(dict(arguments), separators=(",", ":"))
    return Resource(
        kind="queue",
        name=name,
        settings={"durable": "true", **{k: str(v) for k, v in arguments.items()}},
        command=f"rabbitmqadmin declare queue name={name} durable=true arguments='{args}'",
        note=note,
    )


def _binding(exchange: str, queue: str) -> Resource:
    return Resource(
        kind="binding",
        name=f"{exchange} -> {queue}",
        settings={},
        command=f"rabbitmqadmin declare binding source={exchange} destination={queue}",
        note=f"{exchange} delivers to {queue}",
    )


SPEC = TransportSpec(
    name="amqp",
    schemes=("amqp", "amqps"),
    options=AmqpOptions,
    factory=AmqpTransport,
    url_params=_AMQP_QUERY,
)

__all__ = [
    "DLX",
    "SPEC",
    "AmqpOptions",
    "AmqpTransport",
    "connect_refusal",
    "node_urls",
    "tls_context",
    "work_queue_arguments",
]
