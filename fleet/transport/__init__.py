"""Transports, one per URL scheme: ``memory://`` (embedded), ``amqp://`` and
``amqps://`` (RabbitMQ), ``kafka://``, and any a plug-in adds.

:data:`TRANSPORTS` maps a URL scheme to the :class:`TransportSpec` of the
transport that answers to it. It is filled from the ``fleet.transports`` entry
points of every installed distribution, so naming a scheme is what imports its
broker library.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fleet.errors import ConfigError
from fleet.registry import Registry
from fleet.transport.base import (
    DEAD_LETTER,
    DEAD_LETTER_TAP,
    HEARTBEATS,
    Capability,
    Consumer,
    DeadLetterTap,
    Delivery,
    Depth,
    DepthReader,
    HeartbeatChannel,
    NotificationChannel,
    ProduceRateReader,
    ReplyInbox,
    RequestPublisher,
    Resource,
    Transport,
    WorkConsumer,
    check_destination,
    is_reply_address,
    queue_name,
)
from fleet.transport.options import TransportOptions
from fleet.transport.spec import TransportFactory, TransportSpec

TRANSPORTS: Registry[TransportSpec] = Registry(
    "fleet.transports", "transport", TransportSpec, names_of=lambda spec: spec.schemes
)
"""URL scheme -> the transport that answers to it."""


def connect(url: str, **options: object) -> Transport:
    """Make the transport for ``url`` (not yet connected: ``await t.connect()``
    or ``async with connect(url) as t``).

    ``options`` and the URL's query string set the transport's options (see
    its :attr:`TransportSpec.options`); one it does not know is a
    :class:`ConfigError`, as is a scheme no transport answers to."""
    scheme = urlsplit(url).scheme
    if "://" not in url or scheme not in TRANSPORTS:
        known = ", ".join(f"{s}://" for s in TRANSPORTS.names())
        raise ConfigError(f"broker URL scheme {scheme!r} is not known; known: {known}")
    return TRANSPORTS.get(scheme).build(url, options)


__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_TAP",
    "HEARTBEATS",
    "TRANSPORTS",
    "Capability",
    "Consumer",
    "DeadLetterTap",
    "Delivery",
    "Depth",
    "DepthReader",
    "HeartbeatChannel",
    "NotificationChannel",
    "ProduceRateReader",
    "ReplyInbox",
    "RequestPublisher",
    "Resource",
    "Transport",
    "TransportFactory",
    "TransportOptions",
    "TransportSpec",
    "WorkConsumer",
    "check_destination",
    "connect",
    "is_reply_address",
    "queue_name",
]
