"""The transport protocol: the only thing the client, the worker and the
autoscaler know about a broker.

Names (the same on every broker):

- work queue / topic per model and priority class: ``fleet.<model>.<online|batch>``
- dead letters: ``fleet.dead-letter``
- heartbeats: ``fleet.heartbeats``

Semantics every implementation keeps (the behavioural suite checks them):

- ``publish_request`` returns only once the broker has the message (publisher
  confirm / acks=all). A model nobody declared raises :class:`ModelNotFound`, a
  full queue :class:`Overloaded`, a broker out of reach :class:`Unavailable`.
- A delivery that is neither acked nor rejected when its consumer goes away
  (crash, disconnect, cancel) is delivered again, with ``attempt`` one higher.
  Past ``delivery_limit`` attempts it goes to the dead-letter queue instead.
- ``reject`` sends a delivery to the dead-letter queue at once.
- Replies go to the address ``open_inbox`` returned: always
  ``fleet.inbox.<32 hex digits>`` (:func:`is_reply_address`), on every
  transport. ``publish_reply`` to any other address raises
  :class:`~fleet.errors.InvalidArgument` and sends nothing, so a request can
  never make a worker write into a work queue, the heartbeats or the dead
  letters.
- A body over :attr:`Transport.max_message_bytes` is refused with
  :class:`~fleet.errors.LimitExceeded` before anything is sent.
- Notifications go to a destination the user names (a topic exchange on
  RabbitMQ, a topic on Kafka): :func:`check_destination` keeps them out of the
  fleet's own names, so a setting can never make a worker write into a work
  queue, an inbox or the heartbeats.
- Replies go to the address ``open_inbox`` returned. An inbox survives a
  reconnect under the same address; replies sent while it was gone are lost,
  which is why the client re-sends what is unanswered after a reconnect.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from fleet.contract import Priority, check_model_name
from fleet.errors import InvalidArgument, LimitExceeded
from fleet.logging import get_logger
from fleet.transport.options import TransportOptions

log = get_logger("fleet.transport")

DEAD_LETTER = "fleet.dead-letter"
DEAD_LETTER_TAP = "fleet.dead-letter.jobs"
HEARTBEATS = "fleet.heartbeats"
REPLY_PREFIX = "fleet.inbox."
_REPLY_ADDRESS = re.compile(r"fleet\.inbox\.[0-9a-f]{32}")
_DESTINATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

OnDelivery = Callable[["Delivery"], Awaitable[None]]
OnBytes = Callable[[bytes], None]
Listener = Callable[[], Awaitable[None] | None]


class Capability(enum.Enum):
    """What a transport can do beyond the roles every transport plays. A
    transport declares its capabilities in :attr:`Transport.capabilities`;
    callers ask with :meth:`Transport.can`, never by probing attributes or
    comparing scheme names."""

    PRODUCE_RATE = "produce_rate"
    """It implements :class:`ProduceRateReader`: the rate requests were
    published at, read from the broker (Kafka: end offsets over time)."""
    DEAD_LETTER_TAP = "dead_letter_tap"
    """It implements :class:`DeadLetterTap`: the broker itself dead-letters a
    message past the delivery limit (a worker never sees that delivery), and
    hands every dead letter to the consumers of a shared queue as well. Where
    the workers apply the limit themselves (Kafka) there is no need of one."""
    LAG_COUNTS_IN_FLIGHT = "lag_counts_in_flight"
    """:attr:`Depth.ready` already counts what consumers hold unacked (Kafka
    lag is end offset minus committed), so nothing must be added for it."""


def queue_name(model: str, priority: Priority) -> str:
    return f"fleet.{check_model_name(model)}.{priority.label}"


def new_reply_address() -> str:
    """A fresh inbox address: ``fleet.inbox.<32 hex digits>``."""
    return f"{REPLY_PREFIX}{uuid.uuid4().hex}"


def is_reply_address(address: str) -> bool:
    """Whether ``address`` is an inbox address (``fleet.inbox.<32 hex>``), the
    only kind a reply may be published to."""
    return isinstance(address, str) and _REPLY_ADDRESS.fullmatch(address) is not None


def check_reply_address(address: str) -> None:
    """Raise :class:`InvalidArgument` unless ``address`` is an inbox address."""
    if not is_reply_address(address):
        shown = address[:80] if isinstance(address, str) else type(address).__name__
        raise InvalidArgument(f"reply address {shown!r} is not an inbox address")


def check_destination(name: str) -> str:
    """``name`` if it can name a notification destination: 1 to 200 letters,
    digits, ``.``, ``_`` or ``-``, not starting with ``fleet.`` (the fleet's
    own); else :class:`InvalidArgument`."""
    shown = name[:80] if isinstance(name, str) else type(name).__name__
    if not isinstance(name, str) or not _DESTINATION.fullmatch(name):
        raise InvalidArgument(
            f"notification destination {shown!r} is not 1-200 letters, digits, '.', '_' or '-'"
        )
    if name.startswith("fleet."):
        raise InvalidArgument(f"notification destination {shown!r}: 'fleet.' names are the fleet's")
    return name


def check_size(body: bytes, limit: int, what: str) -> None:
    """Raise :class:`LimitExceeded` if ``body`` is over ``limit`` bytes."""
    if len(body) > limit:
        raise LimitExceeded(f"{what} of {len(body)} bytes is over the broker's limit of {limit}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Depth:
    """How much work waits for a model. ``None`` means the broker would not say."""

    model: str
    ready: int  # waiting, not yet delivered (RabbitMQ ready; Kafka lag)
    in_flight: int | None  # delivered, not yet acked (RabbitMQ unacked)
    consumers: int | None = None

    @property
    def backlog(self) -> int:
        return self.ready + (self.in_flight or 0)


class Delivery(abc.ABC):
    """One broker message handed to a consumer."""

    body: bytes
    model: str
    priority: Priority
    attempt: int  # 1 on the first delivery

    @abc.abstractmethod
    async def ack(self) -> None:
        """Done with it: the broker forgets it. A no-op on a dead channel."""

    @abc.abstractmethod
    async def reject(self) -> None:
        """Give up on it: the broker moves it to the dead-letter queue."""

    @abc.abstractmethod
    async def requeue(self) -> None:
        """Hand it back now: the broker delivers it again (here or to another
        consumer) with ``attempt`` one higher, and past ``delivery_limit``
        moves it to the dead-letter queue. For a delivery the worker could not
        finish (its replies could not be published): never left unsettled."""


class Consumer(abc.ABC):
    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving. What was delivered and not acked may still be acked."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Receive nothing more until :meth:`resume`, keeping the subscription
        (on Kafka: the group membership and its partitions, so pausing costs no
        rebalance). What was delivered may still be acked. Idempotent."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Receive again after :meth:`pause`. Idempotent."""

    def idle_reason(self) -> str | None:
        """Why this consumer gets nothing although the broker is up (Kafka: no
        partition assigned because there are more workers than partitions)."""
        return None


class RequestPublisher(abc.ABC):
    """Role: the client side of the work queues."""

    @abc.abstractmethod
    async def declare_model(self, model: str) -> None:
        """Create the model's work queues (both priority classes). Idempotent."""

    @abc.abstractmethod
    async def publish_request(self, model: str, priority: Priority, body: bytes) -> None:
        """Publish a request frame and wait for the broker to confirm it."""


class ReplyInbox(abc.ABC):
    """Role: where a client's replies arrive."""

    @abc.abstractmethod
    async def open_inbox(self, on_reply: OnBytes) -> str:
        """Start receiving reply frames; returns the address workers reply to."""


class WorkConsumer(abc.ABC):
    """Role: the worker side of the work queues."""

    @abc.abstractmethod
    async def consume(
        self, model: str, priority: Priority, on_delivery: OnDelivery, *, prefetch: int
    ) -> Consumer:
        """Deliver the model's requests of one priority class, at most
        ``prefetch`` unacked at a time."""

    @abc.abstractmethod
    async def publish_reply(self, reply_to: str, body: bytes) -> None:
        """Publish a reply frame (confirmed). An inbox that is gone drops it."""


class HeartbeatChannel(abc.ABC):
    """Role: workers' heartbeats, seen by every subscriber."""

    @abc.abstractmethod
    async def publish_heartbeat(self, body: bytes) -> None: ...

    @abc.abstractmethod
    async def subscribe_heartbeats(self, on_beat: OnBytes) -> Consumer: ...


class NotificationChannel(abc.ABC):
    """Role: messages to a destination the user names, for services that react
    to events (finished jobs) without polling. RabbitMQ: a durable topic
    exchange, routing key ``key``; Kafka: a topic, record key ``key``. What a
    destination keeps while nobody listens is its owner's choice: bind a
    durable queue of your own on RabbitMQ; a Kafka topic keeps its records."""

    @abc.abstractmethod
    async def declare_notifications(self, destination: str) -> None:
        """Create the destination if it is missing (idempotent). One that
        exists as something else is a :class:`~fleet.errors.ConfigError`."""

    @abc.abstractmethod
    async def publish_notification(self, destination: str, key: str, body: bytes) -> None:
        """Publish one notification and wait for the broker to confirm it."""

    @abc.abstractmethod
    async def subscribe_notifications(self, destination: str, on_message: OnBytes) -> Consumer:
        """Receive the destination's notifications published from now on."""


class DepthReader(abc.ABC):
    """Role: what operators and the autoscaler read from the broker."""

    @abc.abstractmethod
    async def depth(self, model: str) -> Depth:
        """Backlog of the model over both priority classes."""

    @abc.abstractmethod
    async def take_dead_letters(self, limit: int = 100) -> list[bytes]:
        """Remove and return up to ``limit`` messages from the dead-letter queue."""


class ProduceRateReader(abc.ABC):
    """Optional role (:attr:`Capability.PRODUCE_RATE`)."""

    @abc.abstractmethod
    async def produce_rate(self, model: str) -> float | None:
        """Requests/s published for ``model`` lately; ``None`` if unknown."""


class DeadLetterTap(abc.ABC):
    """Optional role (:attr:`Capability.DEAD_LETTER_TAP`)."""

    @abc.abstractmethod
    async def tap_dead_letters(self, on_delivery: OnDelivery, *, prefetch: int) -> Consumer:
        """Deliver every message dead-lettered from now on (and those waiting
        in the tap's queue ``fleet.dead-letter.jobs``, which is made here),
        shared among the tap's consumers; :data:`DEAD_LETTER` keeps its copy
        for operators. The tap's queue keeps at most 10,000, dropping the
        oldest."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Resource:
    """One thing the fleet creates on a broker (a topic, a queue, an exchange)
    and the settings it creates it with: what ``fleet topology`` prints, so an
    operator can create it beforehand instead."""

    kind: str  # "topic", "queue", "exchange", "binding"
    name: str
    settings: dict[str, str]
    command: str  # a shell command that creates it with the broker's own tools
    note: str = ""


_ROLE_OF_CAPABILITY: dict[Capability, type[object]] = {
    Capability.PRODUCE_RATE: ProduceRateReader,
    Capability.DEAD_LETTER_TAP: DeadLetterTap,
}


class Transport(
    RequestPublisher, ReplyInbox, WorkConsumer, HeartbeatChannel, NotificationChannel, DepthReader
):
    """A broker connection: its lifecycle, and every role each transport plays.
    Use as ``async with connect(url) as transport``. What only some transports
    can do is a :class:`Capability` they declare in :attr:`capabilities`."""

    scheme: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for capability in cls.capabilities:
            role = _ROLE_OF_CAPABILITY.get(capability)
            if role is not None and not issubclass(cls, role):
                raise TypeError(
                    f"{cls.__name__} declares {capability.name} but is no {role.__name__}"
                )

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def __init__(self, url: str, options: TransportOptions) -> None:
        self.url = url
        self.options = options
        self._reconnect_listeners: list[Listener] = []

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @property
    def max_message_bytes(self) -> int:
        """The largest message body this broker takes, requests and replies
        alike; publishing a larger one raises a non-retriable
        :class:`~fleet.errors.LimitExceeded` before anything is sent."""
        return self.options.max_message_bytes

    async def topology(self, models: Sequence[str]) -> list[Resource]:
        """What the fleet creates on this broker for ``models``, each with the
        settings it is created with (a connected transport: some settings,
        such as Kafka's replication factor, follow the cluster's size). A
        transport that creates nothing returns ``[]``."""
        return []

    def add_reconnect_listener(self, listener: Listener) -> None:
        """Called after a lost connection is back, topology re-declared and
        consumers and inboxes restored."""
        self._reconnect_listeners.append(listener)

    async def _fire_reconnected(self) -> None:
        for listener in list(self._reconnect_listeners):
            try:
                result = listener()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("reconnect listener failed")


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() >= end:
            return False
        await asyncio.sleep(interval)
    return True


__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_TAP",
    "HEARTBEATS",
    "REPLY_PREFIX",
    "Capability",
    "Consumer",
    "DeadLetterTap",
    "Delivery",
    "Depth",
    "DepthReader",
    "HeartbeatChannel",
    "NotificationChannel",
    "OnBytes",
    "OnDelivery",
    "ProduceRateReader",
    "ReplyInbox",
    "RequestPublisher",
    "Resource",
    "Transport",
    "TransportOptions",
    "WorkConsumer",
    "check_destination",
    "check_reply_address",
    "check_size",
    "is_reply_address",
    "new_reply_address",
    "queue_name",
    "wait_until",
]
