"""The cluster tier on Kafka: a 3-broker KRaft cluster (``scripts/kafka-cluster.sh``)
loses a node under load, served by a real worker and client that know the
cluster by its three bootstrap hosts.

The transport's defaults give every topic it creates 3 replicas and
``min.insync.replicas=2``, and its producer publishes with ``acks=all``: a
request the brokers confirmed is on at least two nodes, so losing one (a clean
stop, a rolling restart, a kill -9) loses none. Each test counts every request
(:mod:`tests.chaos.ledger`): none lost, crossed or hung; only timeouts may
fail, and only near the fault. Requests get a deadline longer than a fenced
broker's partitions stay without a leader, so a confirmed request is answered.
The time until traffic flows again is printed (``-s`` shows it), never
asserted: it depends on the machine's load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from fleet.contract import Priority
from fleet.transport.base import queue_name
from producer import Client
from tests.chaos.conftest import Load, assert_clean, serves_again, under_fault, with_query
from tests.chaos.ledger import Ledger
from tests.cluster.conftest import cluster_env
from tests.cluster.kafka_support import (
    NODES,
    Confirmed,
    KafkaCluster,
    fleet_topics,
    flowing_again,
    longest_stall,
)
from tests.helpers import running_worker

pytestmark = [pytest.mark.cluster, pytest.mark.kafka]

TIMEOUTS = ("DeadlineExceeded", "Unavailable")
DEADLINE = 20.0
"""Seconds a request may take: well past a killed broker's fencing
(``broker.session.timeout.ms``, 4 s) and the leader elections after it."""
KILL_DEADLINE = 40.0
"""Seconds a request may take in the kill test, whose worker starts only
after the kill: requests sent before wait for it."""
ROWS = 40  # distinct inputs cycled through under load
BACKLOG = 24  # requests waiting, unread, when a node is killed
CONCURRENCY = 4
PACE = 0.2  # seconds each of the concurrent callers rests between requests
AROUND = {"start_after": 2.0, "tail": 2.0}  # seconds of load before and after a short fault


@pytest.fixture
async def cluster(unique_model: str) -> AsyncIterator[KafkaCluster]:
    """The cluster, all three nodes running before and after the test, which
    leaves no topic of its own behind."""
    cluster = KafkaCluster(
        cluster_env("FLEET_TEST_KAFKA_CLUSTER_URL"), cluster_env("FLEET_TEST_KAFKA_CLUSTER_CTL")
    )
    if not await cluster.all_running():
        await cluster.run("start")
    yield cluster
    if not await cluster.all_running():  # a failed test left a node down
        await cluster.run("start")
    await cluster.delete_topics(f"fleet.{unique_model}-")  # fleet.<model>.<priority>


@pytest.fixture
def model_repo(tmp_path: Path, built_models: Path, unique_model: str) -> Path:
    """The digits model alone, as ``<unique_model>-digits``: half the topics
    of the usual repository, so a node has fewer partitions to move."""
    root = tmp_path / "models"
    root.mkdir()
    (root / f"{unique_model}-digits").symlink_to(built_models / "digits", target_is_directory=True)
    return root


def client_url(cluster: KafkaCluster) -> str:
    # a short request timeout, so a send to a node that is gone is noticed soon
    return with_query(cluster.url, publish_timeout=2)


def steady_load(
    load: Load, ledger: Ledger, client: Client, timeout: float = DEADLINE
) -> Callable[[asyncio.Event], Awaitable[None]]:
    return lambda stop: load.run(
        ledger,
        client,
        range(ROWS),
        timeout=timeout,
        concurrency=CONCURRENCY,
        pace=PACE,
        until=stop,
    )


async def assert_replicated(cluster: KafkaCluster, model: str) -> None:
    """The transport's defaults on three brokers: 3 replicas, 2 in sync needed."""
    for topic in (queue_name(model, Priority.ONLINE), "fleet.replies"):
        parts = await cluster.partitions([topic])
        assert all(len(p["replicas"]) == 3 for _, p in parts), parts
        config = await cluster.topic_config(topic)
        assert config["min.insync.replicas"] == "2", config


def overlapped(ledger: Ledger) -> int:
    """Requests whose lifetime overlapped a fault: the load ran through it."""
    return sum(1 for e in ledger.entries for a, b in ledger.faults if e.sent <= b and e.ended >= a)


async def test_stopping_a_partition_leader_under_load(
    cluster: KafkaCluster, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    topic = queue_name(digits, Priority.ONLINE)
    load = Load(model_repo / digits, digits, ROWS + 20, seed=31)
    ledger = Ledger()
    url = client_url(cluster)
    took: dict[str, float] = {}
    async with running_worker(url, model_repo), Client(url, timeout=DEADLINE) as client:
        await assert_replicated(cluster, digits)
        leader = await cluster.leader(topic, 0)

        async def stop_leader() -> None:
            t0 = time.monotonic()
            took["since"] = t0
            await cluster.run("stop-node", str(leader))
            took["stop"] = time.monotonic() - t0
            took["flowing"] = await flowing_again(ledger, t0)

        await under_fault(ledger, steady_load(load, ledger, client), stop_leader, **AROUND)
        await serves_again(ledger, client, load, range(ROWS, ROWS + 20))
        stall = longest_stall(ledger, took["since"])
        await cluster.run("start-node", str(leader))
        await cluster.wait_in_sync(leader, fleet_topics(digits))
    print(
        f"\nkafka cluster, stop of node {leader} (leader of {topic}[0]) under load:"
        f" stop took {took['stop']:.2f}s; a request sent after the stop began was answered"
        f" {took['flowing']:.2f}s after it; longest wait for any answer {stall:.2f}s;"
        f" {ledger.counts()}"
    )
    assert overlapped(ledger) > 0
    assert_clean(ledger, TIMEOUTS)


async def test_rolling_restart_of_all_three_under_load(
    cluster: KafkaCluster, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    load = Load(model_repo / digits, digits, ROWS + 20, seed=32)
    ledger = Ledger()
    url = client_url(cluster)
    topics = fleet_topics(digits)
    steps: list[str] = []
    async with running_worker(url, model_repo), Client(url, timeout=DEADLINE) as client:

        async def rolling_restart() -> None:
            for node in NODES:
                t0 = time.monotonic()
                await cluster.run("stop-node", str(node))
                t1 = time.monotonic()
                await cluster.run("start-node", str(node))
                t2 = time.monotonic()
                await cluster.wait_in_sync(node, topics)
                t3 = time.monotonic()
                stall = longest_stall(ledger, t0)
                steps.append(
                    f"node {node}: stop {t1 - t0:.1f}s, start {t2 - t1:.1f}s,"
                    f" in sync {t3 - t2:.1f}s, longest wait for an answer {stall:.2f}s"
                )

        await under_fault(ledger, steady_load(load, ledger, client), rolling_restart)
        await serves_again(ledger, client, load, range(ROWS, ROWS + 20))
    print("\nkafka cluster, rolling restart under load:", "; ".join(steps), ledger.counts())
    assert overlapped(ledger) > 0
    assert_clean(ledger, TIMEOUTS)


async def test_kill_9_of_a_node_under_load_loses_no_confirmed_request(
    cluster: KafkaCluster, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    topic = queue_name(digits, Priority.ONLINE)
    load = Load(model_repo / digits, digits, ROWS + BACKLOG + 20, seed=33)
    ledger = Ledger()
    confirmed = Confirmed()
    url = client_url(cluster)
    took: dict[str, float] = {}
    async with Client(url, timeout=KILL_DEADLINE) as client, AsyncExitStack() as worker:
        confirmed.watch(client)
        await client.transport.declare_model(digits)
        # requests no worker has read yet, confirmed before the kill, some of
        # them on a partition the killed node leads
        backlog = asyncio.ensure_future(
            load.run(
                ledger,
                client,
                range(ROWS, ROWS + BACKLOG),
                timeout=KILL_DEADLINE,
                concurrency=BACKLOG,
            )
        )
        await confirmed.reach(BACKLOG)
        victim = await cluster.leader(topic, await cluster.holding_partition(topic))

        async def kill() -> None:
            t0 = time.monotonic()
            took["since"] = t0
            await cluster.run("kill-node", str(victim))
            # a worker that starts while the metadata still lists the dead
            # node may send its first requests there and fail to start: it
            # starts once the cluster has fenced the node
            await cluster.wait_fenced(victim)
            await worker.enter_async_context(running_worker(url, model_repo))
            took["worker"] = time.monotonic() - t0
            took["flowing"] = await flowing_again(ledger, t0)

        steady = steady_load(load, ledger, client, timeout=KILL_DEADLINE)
        await under_fault(ledger, steady, kill, **AROUND)
        await backlog
        await serves_again(ledger, client, load, range(ROWS + BACKLOG, ROWS + BACKLOG + 20))
        stall = longest_stall(ledger, took["since"])
    await cluster.run("start-node", str(victim))
    await cluster.wait_in_sync(victim, fleet_topics(digits))
    print(
        f"\nkafka cluster, kill -9 of node {victim} (leader of a partition of {topic} holding"
        f" some of {BACKLOG} confirmed requests nobody had read) under load; the worker started"
        f" {took['worker']:.2f}s after the kill; a request sent after the kill was answered"
        f" {took['flowing']:.2f}s after it; longest wait for any answer {stall:.2f}s;"
        f" {len(confirmed.ids)} requests confirmed; {ledger.counts()}"
    )
    assert overlapped(ledger) > 0
    unanswered = confirmed.unanswered(ledger)
    assert not unanswered, f"confirmed but not answered: {unanswered[:10]}\n{ledger.summary()}"
    assert_clean(ledger, TIMEOUTS)
