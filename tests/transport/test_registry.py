"""The transport registry, strict URL options, roles and capabilities.

None of these connects to a broker: ``connect`` only builds a transport."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.transport import (
    TRANSPORTS,
    Capability,
    DeadLetterTap,
    DepthReader,
    HeartbeatChannel,
    NotificationChannel,
    ProduceRateReader,
    ReplyInbox,
    RequestPublisher,
    Transport,
    TransportOptions,
    TransportSpec,
    WorkConsumer,
    connect,
)
from fleet.transport.amqp import AmqpTransport
from fleet.transport.kafka import KafkaOptions, KafkaTransport
from fleet.transport.memory import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.unit

URLS = {
    "memory": "memory://registry-test",
    "amqp": "amqp://guest:guest@127.0.0.1:1/",
    "kafka": "kafka://127.0.0.1:1",
}


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


# ---------------------------------------------------------------------- registry
def test_every_built_in_scheme_is_registered() -> None:
    secured = {"kafka+ssl", "kafka+sasl", "kafka+sasl+ssl"}
    assert {"memory", "amqp", "amqps", "kafka", *secured} <= set(TRANSPORTS.names())
    assert TRANSPORTS.get("amqps") is TRANSPORTS.get("amqp")
    assert all(TRANSPORTS.get(s) is TRANSPORTS.get("kafka") for s in secured)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        pytest.param(URLS["memory"], MemoryTransport, id="memory"),
        pytest.param(URLS["amqp"], AmqpTransport, id="amqp"),
        pytest.param("amqps://guest:guest@127.0.0.1:1/", AmqpTransport, id="amqps"),
        pytest.param(URLS["kafka"], KafkaTransport, id="kafka"),
    ],
)
def test_connect_builds_the_transport_of_the_scheme(url: str, kind: type[Transport]) -> None:
    assert type(connect(url)) is kind


@pytest.mark.parametrize("url", ["ftp://host/", "no-scheme-at-all", "memory:nothing"])
def test_an_unknown_scheme_lists_the_known_ones(url: str) -> None:
    known = "amqp://, amqps://, kafka://, kafka+sasl://, kafka+sasl+ssl://, kafka+ssl://, memory://"
    with pytest.raises(ConfigError, match=re.escape(f"known: {known}")):
        connect(url)


def test_a_registered_spec_is_used_for_its_schemes() -> None:
    spec = TransportSpec(name="spare", schemes=("spare", "spare2"), factory=MemoryTransport)
    with TRANSPORTS.registered(spec):
        assert isinstance(connect("spare2://x", delivery_limit=2), MemoryTransport)
        assert "spare" in TRANSPORTS
    assert "spare" not in TRANSPORTS


# ---------------------------------------------------------------------- plug-ins
_PLUGIN = """
from fleet.transport import TransportSpec
from fleet.transport.memory import MemoryBroker, MemoryTransport


class FakeTransport(MemoryTransport):
    scheme = "fake"


SPEC = TransportSpec(name="fake", schemes=("fake",), factory=FakeTransport)
NOT_A_SPEC = "a string"
"""


@pytest.fixture(autouse=True)
def _forget_state() -> Iterator[None]:
    """Drop the memory brokers and plug-in transports a test made."""
    yield
    for name in ("registry-test", "x"):
        MemoryBroker.reset(name)
    for name in ("fake", "broken", "wrong", "misnamed"):
        TRANSPORTS.unregister(name)
    for module in [m for m in sys.modules if m.startswith("fake_fleet_plugin_")]:
        del sys.modules[module]


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str) -> str:
    """A distribution with ``entries`` in its ``fleet.transports`` group, found
    on ``sys.path`` the way an installed one is; nothing is installed."""
    module = f"fake_fleet_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(_PLUGIN)
    info = tmp_path / "fake_fleet_plugin-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-fleet-plugin\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[fleet.transports]\n" + entries.format(module=module))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_a_transport_from_a_plugin_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _install_plugin(tmp_path, monkeypatch, "fake = {module}:SPEC\n")
    assert "fake" in TRANSPORTS.names()
    transport = connect("fake://x?max_queue_length=3")
    assert type(transport).__module__ == module
    assert type(transport).__name__ == "FakeTransport"
    assert transport.options.max_queue_length == 3
    with pytest.raises(ConfigError, match=r"unknown URL option 'partitions' for fake://"):
        connect("fake://x?partitions=3")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param(
            "broken = {module}_gone:SPEC",
            r"transport 'broken' \(entry point .*\) cannot be loaded: ModuleNotFoundError",
            id="module-missing",
        ),
        pytest.param(
            "broken = {module}:NOWHERE",
            r"transport 'broken' \(entry point .*\) cannot be loaded: AttributeError",
            id="attribute-missing",
        ),
        pytest.param(
            "wrong = {module}:NOT_A_SPEC",
            r"transport 'wrong' \(entry point .*\) is a str, not a TransportSpec",
            id="not-a-spec",
        ),
        pytest.param(
            "misnamed = {module}:SPEC",
            r"transport 'misnamed' \(entry point .*\) calls itself 'fake'",
            id="scheme-mismatch",
        ),
    ],
)
def test_a_broken_plugin_entry_point_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, message: str
) -> None:
    _install_plugin(tmp_path, monkeypatch, entry + "\n")
    name = entry.split(" = ")[0]
    assert name in TRANSPORTS.names()  # declared: never silently left out
    with pytest.raises(ConfigError, match=message):
        connect(f"{name}://x")


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize("kind", sorted(URLS))
def test_an_unknown_url_option_is_an_error(kind: str) -> None:
    with pytest.raises(ConfigError) as err:
        connect(_with_query(URLS[kind], "max_queue_lenght=5"))
    text = str(err.value)
    assert "'max_queue_lenght'" in text
    valid = TRANSPORTS.get(kind).options.names()
    assert f"valid: {', '.join(valid)}" in text


@pytest.mark.parametrize("kind", sorted(URLS))
def test_an_unknown_keyword_option_is_an_error(kind: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown transport option 'prefetch'"):
        connect(URLS[kind], prefetch=3)


@pytest.mark.parametrize(
    ("kind", "query"),
    [
        pytest.param("memory", "partitions=2", id="memory-partitions"),
        pytest.param("memory", "management_url=http://h:15672", id="memory-management-url"),
        pytest.param("amqp", "max_lag=2", id="amqp-max-lag"),
        pytest.param("kafka", "heartbeat=5", id="kafka-amqp-heartbeat"),
    ],
)
def test_another_transports_option_is_an_error(kind: str, query: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown URL option '{query.split('=')[0]}'"):
        connect(_with_query(URLS[kind], query))


@pytest.mark.parametrize(
    ("kind", "query", "option", "value"),
    [
        pytest.param("memory", "delivery_limit=2", "delivery_limit", 2, id="memory"),
        pytest.param("amqp", "publish_timeout=1.5", "publish_timeout", 1.5, id="amqp"),
        pytest.param(
            "amqp",
            "management_url=http://h:1/",
            "management_url",
            "http://h:1/",
            id="amqp-management-url",
        ),
        pytest.param("kafka", "partitions=3", "partitions", 3, id="kafka-partitions"),
        pytest.param("kafka", "max_lag=7", "max_lag", 7, id="kafka-max-lag"),
    ],
)
def test_a_transports_own_options_are_read(
    kind: str, query: str, option: str, value: object
) -> None:
    transport = connect(_with_query(URLS[kind], query))
    assert getattr(transport.options, option) == value
    assert isinstance(transport.options, TRANSPORTS.get(kind).options)


def test_amqp_keeps_the_url_parameters_aiormq_reads() -> None:
    url = _with_query(URLS["amqp"], "heartbeat=7&name=fleet-test&max_queue_length=4")
    transport = connect(url)
    assert isinstance(transport, AmqpTransport)
    assert transport.options.max_queue_length == 4
    assert transport._amqp_url.endswith("?heartbeat=7&name=fleet-test")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("memory://x?delivery_limit=two", r"delivery_limit='two' is not a valid int"),
        pytest.param("kafka://h:1?partitions=0", r"partitions must be at least 1"),
        pytest.param("amqp://h/?max_queue_length=0", r"max_queue_length must be at least 1"),
    ],
)
def test_a_bad_option_value_is_an_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        connect(url)


def test_a_keyword_overrides_the_url_and_none_keeps_it() -> None:
    transport = connect("kafka://h:1?partitions=2&max_lag=9", partitions=5, max_lag=None)
    assert isinstance(transport.options, KafkaOptions)
    assert (transport.options.partitions, transport.options.max_lag) == (5, 9)


def test_a_transport_extends_common_options_to_its_own() -> None:
    transport = KafkaTransport("kafka://h:1", TransportOptions(delivery_limit=3))
    assert transport.options == KafkaOptions(delivery_limit=3)


# ---------------------------------------------------------------------- roles
_ROLES = (
    RequestPublisher,
    ReplyInbox,
    WorkConsumer,
    HeartbeatChannel,
    NotificationChannel,
    DepthReader,
)


@pytest.mark.parametrize("kind", [MemoryTransport, AmqpTransport, KafkaTransport])
def test_every_transport_plays_every_role(kind: type[Transport]) -> None:
    assert all(issubclass(kind, role) for role in _ROLES)


def test_each_transport_declares_its_capabilities_and_plays_their_roles() -> None:
    kafka = connect(URLS["kafka"])
    assert kafka.can(Capability.PRODUCE_RATE) and kafka.can(Capability.LAG_COUNTS_IN_FLIGHT)
    assert isinstance(kafka, ProduceRateReader)
    for url in (URLS["memory"], URLS["amqp"], URLS["kafka"]):
        transport = connect(url)
        assert transport.can(Capability.DEAD_LETTER_TAP)
        assert isinstance(transport, DeadLetterTap)
    for url in (URLS["memory"], URLS["amqp"]):
        other = connect(url)
        assert {c for c in Capability if other.can(c)} == {Capability.DEAD_LETTER_TAP}
        assert not isinstance(other, ProduceRateReader)


def test_a_capability_without_its_role_is_refused() -> None:
    with pytest.raises(TypeError, match="declares PRODUCE_RATE but is no ProduceRateReader"):

        class _Boastful(MemoryTransport):
            capabilities = frozenset({Capability.PRODUCE_RATE})


def test_a_transport_keeps_its_own_defaults_for_options_left_at_theirs() -> None:
    transport = KafkaTransport("kafka://h:1", TransportOptions(publish_timeout=2.0))
    assert transport.options.max_message_bytes == KafkaOptions().max_message_bytes
    assert transport.options.max_message_bytes < TransportOptions().max_message_bytes
    chosen = KafkaTransport("kafka://h:1", TransportOptions(max_message_bytes=5000))
    assert chosen.max_message_bytes == 5000
