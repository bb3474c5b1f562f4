"""What a transport declares to join the ``fleet.transports`` registry.

A transport module exposes ``SPEC = TransportSpec(...)`` and names it in an
entry point per URL scheme it answers to (``pyproject.toml``)::

    [project.entry-points."fleet.transports"]
    amqp = "fleet.transport.amqp:SPEC"
    amqps = "fleet.transport.amqp:SPEC"

A third-party package adds a transport the same way, from its own metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fleet.errors import ConfigError
from fleet.transport.base import Transport
from fleet.transport.options import TransportOptions

TransportFactory = Callable[[str, TransportOptions], Transport]
"""``(url, options) -> Transport``: makes the transport, not yet connected.
``options`` is an instance of the spec's :attr:`TransportSpec.options`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportSpec:
    """One transport: its name, its URL schemes, its options, its factory."""

    name: str
    schemes: tuple[str, ...]
    """The URL schemes it answers to (the registry's names for it)."""
    options: type[TransportOptions] = TransportOptions
    """Its options model: the common options plus its own."""
    factory: TransportFactory
    url_params: frozenset[str] = frozenset()
    """Query parameters that are no option but that the broker library reads
    from the URL itself (e.g. aiormq's ``heartbeat``): accepted as they are."""

    def __post_init__(self) -> None:
        if not self.schemes:
            raise ConfigError(f"transport {self.name!r} declares no URL scheme")

    def options_for(
        self, url: str, overrides: Mapping[str, object] | None = None
    ) -> TransportOptions:
        """Its options from ``url``'s query string and ``overrides``; strict."""
        return self.options.from_url(url, overrides, url_params=self.url_params)

    def build(self, url: str, overrides: Mapping[str, object] | None = None) -> Transport:
        """The transport for ``url`` (not yet connected)."""
        return self.factory(url, self.options_for(url, overrides))


__all__ = ["TransportFactory", "TransportSpec"]
