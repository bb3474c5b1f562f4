"""Transport options: what a broker URL's query string (or keyword arguments to
:func:`fleet.transport.connect`) may set.

:class:`TransportOptions` holds the options every transport takes; a transport
with options of its own subclasses it (Kafka's ``partitions`` and ``max_lag``).
Parsing is strict: a query parameter or keyword that is neither an option of
that transport nor a parameter its broker library reads from the URL is a
:class:`~fleet.errors.ConfigError` naming it and the valid ones, so a typo is
never silently a default.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Self, Union, get_args, get_origin, get_type_hints
from urllib.parse import parse_qs, urlsplit

from fleet.errors import ConfigError
from fleet.redact import dataclass_repr


@dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class TransportOptions:
    """Settings common to every transport; each may be given in the URL's query
    string (``amqp://host/?max_queue_length=5000``) or as keyword arguments.
    The ``repr`` shows a URL option's password as ``***``; a subclass keeps
    that with ``@dataclass(..., repr=False)``."""

    max_queue_length: int = 10_000  # messages per work queue; past it: Overloaded
    delivery_limit: int = 5  # deliveries before a message is dead-lettered
    publish_timeout: float = 5.0  # seconds to wait for a broker confirm
    reconnect_interval: float = 0.5  # seconds between reconnection attempts
    max_message_bytes: int = (
        64 << 20
    )  # largest message body the broker takes; past it: LimitExceeded

    COUNTS: ClassVar[tuple[str, ...]] = ("max_queue_length", "delivery_limit", "max_message_bytes")
    """Options that must be at least 1."""

    def __repr__(self) -> str:
        return dataclass_repr(self)

    def __post_init__(self) -> None:
        for key in self.COUNTS:
            if getattr(self, key) < 1:
                raise ConfigError(f"transport option {key} must be at least 1")

    @classmethod
    def names(cls) -> list[str]:
        """The option names, sorted."""
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_url(
        cls,
        url: str,
        overrides: Mapping[str, object] | None = None,
        *,
        url_params: frozenset[str] = frozenset(),
    ) -> Self:
        """The options in ``url``'s query string, then ``overrides`` (a value of
        ``None`` keeps the URL's or the default). ``url_params`` are query
        parameters that are no option but that the broker library reads from
        the URL itself; they are accepted and left alone."""
        hints = get_type_hints(cls)
        known = set(cls.names())
        values: dict[str, object] = {}
        for key, raw in parse_qs(urlsplit(url).query, keep_blank_values=True).items():
            if key in known:
                values[key] = _parse(key, raw[-1], hints[key])
            elif key not in url_params:
                cls._unknown(url, key, "URL option", url_params)
        for key, value in (overrides or {}).items():
            if key not in known:
                cls._unknown(url, key, "transport option", frozenset())
            if value is not None:
                values[key] = value
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def extend(cls, options: TransportOptions) -> Self:
        """``options`` as this class: the options it has, defaults for the rest.
        An option left at its common default takes this class's default (a
        transport may default differently, e.g. a smaller ``max_message_bytes``)."""
        if isinstance(options, cls):
            return options
        common = {
            f.name: getattr(options, f.name)
            for f in dataclasses.fields(options)
            if getattr(options, f.name) != f.default
        }
        return cls(**common)

    @classmethod
    def _unknown(cls, url: str, key: str, what: str, url_params: frozenset[str]) -> None:
        scheme = urlsplit(url).scheme
        valid = ", ".join(cls.names())
        also = f" (and the URL parameters {', '.join(sorted(url_params))})" if url_params else ""
        raise ConfigError(f"unknown {what} {key!r} for {scheme}:// URLs; valid: {valid}{also}")


def _parse(key: str, raw: str, kind: object) -> object:
    """``raw`` as the type ``kind`` of option ``key`` (``X | None`` as ``X``)."""
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    if not isinstance(kind, type):
        raise ConfigError(f"URL option {key} cannot be given in a URL")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"URL option {key}={raw!r} is not a valid {kind.__name__}") from None


__all__ = ["TransportOptions"]
