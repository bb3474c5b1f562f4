"""``fleet topology`` and the replication settings behind it: what the fleet
creates on each broker, with the settings it creates it with, read from the
same code that creates it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from fleet.contract import Priority
from fleet.errors import ConfigError
from fleet.transport import connect, queue_name
from fleet.transport.kafka import KafkaOptions
from fleetctl.cli import build_parser
from tests.conftest import broker_url_for


def _topology(url: str, *models: str, fmt: str = "json") -> str:
    out = io.StringIO()
    args = ["topology", "--broker", url, "--format", fmt]
    for m in models:
        args += ["--model", m]
    parsed = build_parser().parse_args(args)
    with contextlib.redirect_stdout(out):
        assert parsed.handler(parsed) == 0
    return out.getvalue()


def _by_name(text: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads(text)}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("brokers", "options", "want"),
    [
        (1, {}, (1, None)),
        (2, {}, (2, None)),
        (3, {}, (3, 2)),
        (6, {}, (3, 2)),
        (6, {"replication_factor": 5}, (5, 2)),
        (3, {"min_insync_replicas": 3}, (3, 3)),
        (1, {"replication_factor": 1, "min_insync_replicas": 1}, (1, 1)),
    ],
)
def test_kafka_replication_follows_the_cluster(
    brokers: int, options: dict[str, int], want: tuple[int, int | None]
) -> None:
    assert KafkaOptions(**options).replicas(brokers) == want  # type: ignore[arg-type]


@pytest.mark.unit
def test_min_insync_replicas_over_the_replication_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match="no write could ever be confirmed"):
        connect("kafka://h:9092/?replication_factor=2&min_insync_replicas=3")


@pytest.mark.kafka
async def test_kafka_topology_is_what_the_transport_creates(unique_model: str) -> None:
    url = broker_url_for("kafka")
    text = await asyncio.to_thread(
        _topology, f"{url}/?min_insync_replicas=1&partitions=3", unique_model
    )
    topics = _by_name(text)
    online = topics[queue_name(unique_model, Priority.ONLINE)]
    assert online["kind"] == "topic"
    # one broker here: min(3, brokers) = 1 copy; the URL's settings are followed
    assert online["settings"]["replication.factor"] == "1"
    assert online["settings"]["partitions"] == "3"
    assert online["settings"]["min.insync.replicas"] == "1"
    assert "fleet.dead-letter" in topics and "fleet.heartbeats" in topics

    # and the transport creates the topic with exactly those settings
    async with connect(f"{url}/?min_insync_replicas=1&partitions=3") as transport:
        await transport.declare_model(unique_model)
    admin = AIOKafkaAdminClient(bootstrap_servers=url.removeprefix("kafka://"))
    await admin.start()
    try:
        name = queue_name(unique_model, Priority.ONLINE)
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        meta = await admin.describe_topics([name])
    finally:
        await admin.close()
    configs = {c[0]: c[1] for c in described[0].resources[0][4]}
    assert configs["min.insync.replicas"] == "1"
    assert configs["max.message.bytes"] == online["settings"]["max.message.bytes"]
    assert len(meta[0]["partitions"]) == 3
    assert all(len(p["replicas"]) == 1 for p in meta[0]["partitions"])


@pytest.mark.kafka
async def test_more_replicas_than_brokers_is_a_config_error(unique_model: str) -> None:
    url = broker_url_for("kafka")
    async with connect(f"{url}/?replication_factor=3") as transport:
        with pytest.raises(ConfigError, match="with 3 replicas on 1 broker"):
            await transport.declare_model(unique_model)


@pytest.mark.rabbitmq
async def test_rabbitmq_topology_and_quorum_group_size(unique_model: str) -> None:
    url = broker_url_for("amqp")
    sep = "&" if "?" in url else "?"
    sized = f"{url}{sep}quorum_group_size=1"
    queues = _by_name(await asyncio.to_thread(_topology, sized, unique_model))
    online = queues[queue_name(unique_model, Priority.ONLINE)]
    assert online["settings"]["x-queue-type"] == "quorum"
    assert online["settings"]["x-quorum-initial-group-size"] == "1"
    assert queues["fleet.dlx"]["kind"] == "exchange"
    async with connect(sized) as transport:
        await transport.declare_model(unique_model)  # the broker takes those arguments
    commands = await asyncio.to_thread(_topology, url, unique_model, fmt="commands")
    assert (
        f"rabbitmqadmin declare queue name={queue_name(unique_model, Priority.ONLINE)}" in commands
    )
    assert "x-quorum-initial-group-size" not in commands  # unset: the broker's default
