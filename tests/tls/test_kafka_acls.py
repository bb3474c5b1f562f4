"""The Kafka rights docs/security.md lists, checked against a broker that
enforces ACLs (``scripts/kafka.sh`` runs Kafka's StandardAuthorizer).

A worker, a client and the autoscaler each log in as a user of their own
(``fleet_worker``, ``fleet_client``, ``fleet_autoscaler``: PLAIN on the
loopback SASL listener) holding exactly the table's grants for one model, with
its topics made beforehand by an administrator. A request goes through and is
answered, heartbeats reach the autoscaler, the backlog is read; and a role
asking for what the table does not give it is refused with a typed error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from fleet.contract import Priority
from fleet.errors import NotAuthorized
from fleet.transport import Transport, connect
from fleet.transport.base import queue_name, wait_until
from tests.conftest import broker_url_for
from tests.tls.conftest import tls_env
from tests.transport.conftest import Deliveries, Frames

pytestmark = [pytest.mark.tls, pytest.mark.kafka]

# Kafka's protocol codes (org.apache.kafka.common.acl / resource).
TOPIC, GROUP, CLUSTER = 2, 3, 4
LITERAL = 3
READ, WRITE, DESCRIBE, IDEMPOTENT_WRITE = 3, 4, 8, 12
ALLOW = 3
SHARED = ("fleet.replies", "fleet.dead-letter", "fleet.heartbeats")


def grants(model: str) -> dict[str, list[tuple[int, str, tuple[int, ...]]]]:
    """docs/security.md's table for one model: per user, (resource type,
    name, operations)."""
    requests = [queue_name(model, p) for p in Priority]
    return {
        "fleet_worker": [
            *[(TOPIC, t, (READ, WRITE, DESCRIBE)) for t in requests],
            *[(TOPIC, t, (WRITE, DESCRIBE)) for t in SHARED],
            *[(GROUP, t, (READ,)) for t in requests],
        ],
        "fleet_client": [
            *[(TOPIC, t, (WRITE, DESCRIBE)) for t in requests],
            (TOPIC, "fleet.replies", (READ, DESCRIBE)),
            *[(TOPIC, t, (DESCRIBE,)) for t in SHARED if t != "fleet.replies"],
            *[(GROUP, t, (DESCRIBE,)) for t in requests],  # the backlog, before publishing
        ],
        "fleet_autoscaler": [
            *[(TOPIC, t, (DESCRIBE,)) for t in requests],
            (TOPIC, "fleet.heartbeats", (READ, DESCRIBE)),
            *[(TOPIC, t, (DESCRIBE,)) for t in SHARED if t != "fleet.heartbeats"],
            *[(GROUP, t, (DESCRIBE,)) for t in requests],
            # its transport's producer is idempotent, and it writes no topic
            # (Write on a topic implies this right for the others)
            (CLUSTER, "kafka-cluster", (IDEMPOTENT_WRITE,)),
        ],
    }


async def grant(
    admin: AIOKafkaAdminClient, user: str, rights: list[tuple[int, str, tuple[int, ...]]]
) -> None:
    for resource, name, operations in rights:
        for operation in operations:
            request = CreateAclsRequest(
                resource, name, LITERAL, f"User:{user}", "*", operation, ALLOW
            )
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                assert code == 0, f"{user} {name}: {message}"


def as_user(sasl_url: str, user: str, password: str) -> str:
    """The loopback SASL listener's URL, logging in as ``user``."""
    parts = urlsplit(sasl_url)
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


Open = Callable[[str], Awaitable[Transport]]


@pytest.fixture
async def roles(unique_model: str) -> AsyncIterator[Open]:
    """Grants the table to the three users for ``unique_model``, whose topics
    an administrator made; yields a function opening a transport as a user."""
    sasl_url = tls_env("FLEET_TEST_KAFKA_SASL_URL")
    password = tls_env("FLEET_TEST_KAFKA_SASL_URL_PASSWORD")
    plain = broker_url_for("kafka")  # ANONYMOUS, a super user on this broker
    async with connect(f"{plain}?partitions=2") as admin_transport:
        await admin_transport.declare_model(unique_model)
    admin = AIOKafkaAdminClient(bootstrap_servers=plain.removeprefix("kafka://"))
    await admin.start()
    opened: list[Transport] = []
    try:
        for user, rights in grants(unique_model).items():
            await grant(admin, user, rights)

        async def open_as(user: str) -> Transport:
            transport = connect(as_user(sasl_url, user, password) + "&partitions=2")
            opened.append(transport)
            await transport.connect()
            return transport

        yield open_as
    finally:
        for transport in opened:
            await transport.close()
        await admin.close()


async def test_each_role_works_with_the_documented_grants(roles: Open, unique_model: str) -> None:
    worker = await roles("fleet_worker")
    client = await roles("fleet_client")
    autoscaler = await roles("fleet_autoscaler")

    await worker.declare_model(unique_model)  # made beforehand: the refused create is fine
    got = Deliveries()
    await worker.consume(unique_model, Priority.ONLINE, got, prefetch=4)
    beats = Frames()
    await autoscaler.subscribe_heartbeats(beats)

    replies = Frames()
    address = await client.open_inbox(replies)
    await client.publish_request(unique_model, Priority.ONLINE, address.encode())
    (delivery,) = await got.wait(1)
    await worker.publish_reply(delivery.body.decode(), b"answer")
    await delivery.ack()
    await replies.wait_for(b"answer")

    depth = await autoscaler.depth(unique_model)
    assert (depth.ready, depth.consumers) == (0, 1)
    beat = f"beat {unique_model}".encode()
    for _ in range(40):  # the subscription starts at the topic's end: beat until one is seen
        await worker.publish_heartbeat(beat)
        if await wait_until(lambda: beat in beats.items, timeout=0.5):
            break
    assert beat in beats.items


async def test_a_user_granted_nothing_is_refused_at_connect(roles: Open) -> None:
    with pytest.raises(NotAuthorized, match="'fleet_nobody' a cluster right") as refused:
        await roles("fleet_nobody")
    assert not refused.value.retriable


@pytest.mark.parametrize(
    ("user", "act"),
    [
        pytest.param(
            "fleet_client",
            lambda t, m: t.consume(m, Priority.ONLINE, Deliveries(), prefetch=1),
            id="a-client-reads-requests",
        ),
        pytest.param(
            "fleet_autoscaler",
            lambda t, m: t.publish_request(m, Priority.ONLINE, b"x"),
            id="the-autoscaler-sends-a-request",
        ),
        pytest.param(
            "fleet_client",
            lambda t, m: t.declare_model(f"{m}-other"),
            id="a-client-makes-topics",
        ),
    ],
)
async def test_what_the_table_does_not_grant_is_refused(
    roles: Open, unique_model: str, user: str, act: Callable[[Transport, str], Awaitable[object]]
) -> None:
    transport = await roles(user)
    with pytest.raises(NotAuthorized) as refused:
        await asyncio.wait_for(act(transport, unique_model), 30)
    assert not refused.value.retriable, refused.value
