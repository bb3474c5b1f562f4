"""What the Kafka transport and its consumers share: the attempt header and
the commit metadata that counts deliveries (see
:mod:`fleet.transport._kafka_consumer`), the dead-letter headers, and
:class:`ConsumerHost`, the little of the transport a consumer relies on."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition

from fleet.transport._kafka_wire import Cluster
from fleet.transport.base import Consumer
from fleet.transport.options import TransportOptions

ATTEMPT_HEADER = "fleet-attempt"
DEAD_LETTER_HEADER_PREFIX = "fleet-dlq-"
_META_PREFIX = "fa1:"


class ConsumerHost(Protocol):
    """The transport as its consumers see it."""

    @property
    def bootstrap(self) -> list[str]: ...

    @property
    def client_options(self) -> dict[str, Any]:
        """The servers and security settings every aiokafka client is built with."""

    @property
    def client_id(self) -> str: ...

    @property
    def wire(self) -> Cluster | None:
        """The data path's own connections; None where aiokafka's serve it (SASL)."""

    @property
    def options(self) -> TransportOptions: ...

    async def dead_letter(self, record: Any, reason: str, attempt: int) -> None:
        """Publish ``record`` to the dead-letter topic (confirmed)."""

    async def republish(self, record: Any, attempt: int) -> None:
        """Publish ``record`` again at the end of its topic, to be delivered
        with ``attempt`` (confirmed)."""

    async def committed(
        self, group: str, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, Any]:
        """The group's committed offsets (with metadata) of these partitions."""

    async def group_members(self, group: str) -> int | None:
        """How many members the group has; ``None`` if the broker won't say."""

    def probe_soon(self) -> None:
        """A connection broke: ask the broker now whether it is still there."""

    def forget_consumer(self, consumer: Consumer) -> None:
        """``consumer`` has stopped: the transport no longer closes it."""


def header_attempt(headers: Sequence[tuple[str, bytes]] | None) -> int:
    """The attempt a record was published with (1 without the header)."""
    for key, value in headers or ():
        if key == ATTEMPT_HEADER:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                return max(1, int(value.decode()))
    return 1


def parse_attempts(metadata: str | None) -> list[tuple[int, int]]:
    """``fa1:105=3,220=1`` -> ``[(105, 3), (220, 1)]``; anything else -> ``[]``."""
    if not metadata or not metadata.startswith(_META_PREFIX):
        return []
    out: list[tuple[int, int]] = []
    try:
        for part in metadata[len(_META_PREFIX) :].split(","):
            if part:
                upto, count = part.split("=")
                out.append((int(upto), int(count)))
    except ValueError:
        return []
    return sorted(out)


def format_attempts(segments: Sequence[tuple[int, int]]) -> str:
    return _META_PREFIX + ",".join(f"{upto}={count}" for upto, count in segments)


def attempt_headers(record: Any, attempt: int) -> list[tuple[str, bytes]]:
    """``record``'s headers with the attempt header set to ``attempt``."""
    headers = [(k, v) for k, v in (record.headers or ()) if k != ATTEMPT_HEADER]
    return [*headers, (ATTEMPT_HEADER, str(attempt).encode())]


def dead_letter_headers(record: Any, reason: str, attempt: int) -> list[tuple[str, bytes]]:
    """``record``'s headers, plus where it came from and why it is dead."""
    headers = [
        (k, v) for k, v in (record.headers or ()) if not k.startswith(DEAD_LETTER_HEADER_PREFIX)
    ]
    headers += [
        (f"{DEAD_LETTER_HEADER_PREFIX}topic", record.topic.encode()),
        (f"{DEAD_LETTER_HEADER_PREFIX}partition", str(record.partition).encode()),
        (f"{DEAD_LETTER_HEADER_PREFIX}offset", str(record.offset).encode()),
        (f"{DEAD_LETTER_HEADER_PREFIX}reason", reason.encode()),
        (f"{DEAD_LETTER_HEADER_PREFIX}attempt", str(attempt).encode()),
    ]
    return headers


__all__ = [
    "ATTEMPT_HEADER",
    "ConsumerHost",
    "attempt_headers",
    "dead_letter_headers",
    "format_attempts",
    "header_attempt",
    "parse_attempts",
]
