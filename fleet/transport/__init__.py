"""Transports: ``memory://`` (embedded), ``amqp://`` (RabbitMQ), ``kafka://``."""

from __future__ import annotations

from urllib.parse import urlsplit

from fleet.errors import ConfigError
from fleet.transport.base import (
    DEAD_LETTER,
    HEARTBEATS,
    Consumer,
    Delivery,
    Depth,
    Transport,
    TransportOptions,
    queue_name,
)

SCHEMES = ("memory", "amqp", "amqps", "kafka")


def connect(url: str, **options: object) -> Transport:
    """Make the transport for ``url`` (not yet connected: ``await t.connect()``
    or ``async with connect(url) as t``). Imports the broker library lazily."""
    scheme = urlsplit(url).scheme
    opts = TransportOptions.from_url(url, **options)
    if scheme == "memory":
        from fleet.transport.memory import MemoryTransport

        return MemoryTransport(url, opts)
    if scheme in ("amqp", "amqps"):
        from fleet.transport.amqp import AmqpTransport

        return AmqpTransport(url, opts)
    if scheme == "kafka":
        from fleet.transport.kafka import KafkaTransport

        return KafkaTransport(url, opts)
    raise ConfigError(f"broker URL {url!r}: scheme must be one of {', '.join(SCHEMES)}")


__all__ = [
    "DEAD_LETTER",
    "HEARTBEATS",
    "SCHEMES",
    "Consumer",
    "Delivery",
    "Depth",
    "Transport",
    "TransportOptions",
    "connect",
    "queue_name",
]
