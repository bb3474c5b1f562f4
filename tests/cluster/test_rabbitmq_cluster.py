"""The cluster tier on RabbitMQ: a 3-node cluster (``scripts/rabbitmq-cluster.sh``)
loses a node under load, through a real worker and client given every node's
address (the transport tries them in turn). The work queue is a quorum queue
with a member on each node.

- The node leading the work queue stops cleanly: nothing is lost or crossed,
  and how long the traffic stood still is printed.
- All three nodes restart one after the other, each back with the queue's
  three members online before the next: nothing is lost.
- The node leading a work queue that holds a backlog of confirmed requests
  (no worker takes them yet) is killed (SIGKILL): a worker started after the
  kill answers every one of them, and no confirmed request of the load on
  another model is lost.

While a node is down a request may fail with a typed error (the ledger allows
``DeadlineExceeded`` and ``Unavailable`` near a fault); none may be lost,
crossed or left hanging. Every wait on the cluster is a bounded poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.contract import Priority
from fleet.transport.base import queue_name
from producer import Client
from tests.chaos.conftest import Load, assert_clean, serves_again, under_fault
from tests.chaos.ledger import Ledger
from tests.cluster.amqp_support import (
    NODES,
    Cluster,
    Confirmed,
    Reconnects,
    delete_queues,
    outage,
    wait_flowing,
    work_queue,
)
from tests.cluster.conftest import cluster_env
from tests.helpers import running_worker

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq]

TIMEOUTS = ("DeadlineExceeded", "Unavailable")
DEADLINE = 20.0  # seconds a request may take: losing a node costs a few
ROWS = 100  # distinct requests the load cycles through; 20 more for the check after
BACKLOG = 40  # confirmed requests waiting in the queue whose leader is killed
HELD_DEADLINE = 40.0  # seconds they may wait: the kill, an election, a worker's start


@pytest.fixture
def url() -> str:
    return cluster_env("FLEET_TEST_AMQP_CLUSTER_URL")


@pytest.fixture
async def cluster(url: str, unique_model: str) -> AsyncIterator[Cluster]:
    """The cluster, every node running before and after the test; the test's
    queues deleted after it."""
    nodes = Cluster(cluster_env("FLEET_TEST_AMQP_CLUSTER_CTL"))
    await nodes.heal()
    yield nodes
    await nodes.heal()
    models = (f"{unique_model}-{name}" for name in ("digits", "mlp", "held"))
    await delete_queues(url, (queue_name(m, p) for m in models for p in Priority))


async def _load(load: Load, ledger: Ledger, client: Client, stop: asyncio.Event) -> None:
    """A small steady load: 4 requests at a time, each slot resting 50 ms."""
    await load.run(
        ledger, client, range(ROWS), timeout=DEADLINE, concurrency=4, pace=0.05, until=stop
    )


async def _leader(cluster: Cluster, queue: str) -> int:
    """The work queue, whole: a quorum queue, a member online on each node; its leader."""
    state = await cluster.wait_whole(queue)
    assert state.type == "quorum", state
    assert state.members == NODES, state
    assert state.leader is not None
    return state.leader


async def test_stopping_the_leader_under_load_loses_nothing(
    url: str, model_repo: Path, unique_model: str, cluster: Cluster
) -> None:
    digits = f"{unique_model}-digits"
    queue = work_queue(digits)
    load = Load(model_repo / digits, digits, ROWS + 20, seed=31)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=DEADLINE) as client:
        reconnects = Reconnects(client)
        leader = await _leader(cluster, queue)

        async def stop_the_leader() -> None:
            began = time.monotonic()
            await cluster.stop_node(leader)
            gone = time.monotonic()
            new = await cluster.wait_new_leader(queue, leader)
            await wait_flowing(ledger, gone)
            print(
                f"rabbitmq cluster: clean stop of node {leader} (the leader) took"
                f" {gone - began:.1f}s; node {new} leads; traffic stood still"
                f" {outage(ledger, began):.1f}s at most"
            )
            await cluster.start_node(leader)
            await cluster.wait_whole(queue)

        await under_fault(ledger, lambda stop: _load(load, ledger, client, stop), stop_the_leader)
        await serves_again(ledger, client, load, range(ROWS, ROWS + 20), within=60)
    print(
        f"rabbitmq cluster: leader stopped: {dict(ledger.counts())},"
        f" client reconnected {reconnects.count} times"
    )
    assert_clean(ledger, TIMEOUTS)


@pytest.mark.timeout(180)
async def test_a_rolling_restart_under_load_loses_nothing(
    url: str, model_repo: Path, unique_model: str, cluster: Cluster
) -> None:
    digits = f"{unique_model}-digits"
    queue = work_queue(digits)
    load = Load(model_repo / digits, digits, ROWS + 20, seed=32)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=DEADLINE) as client:
        reconnects = Reconnects(client)
        await _leader(cluster, queue)

        async def rolling_restart() -> None:
            for n in NODES:
                began = time.monotonic()
                await cluster.stop_node(n)
                await cluster.start_node(n)
                state = await cluster.wait_whole(queue)
                print(
                    f"rabbitmq cluster: node {n} restarted, the queue whole again after"
                    f" {time.monotonic() - began:.1f}s (node {state.leader} leads); traffic"
                    f" stood still {outage(ledger, began):.1f}s at most"
                )

        await under_fault(ledger, lambda stop: _load(load, ledger, client, stop), rolling_restart)
        await serves_again(ledger, client, load, range(ROWS, ROWS + 20), within=60)
    print(
        f"rabbitmq cluster: rolling restart: {dict(ledger.counts())},"
        f" client reconnected {reconnects.count} times"
    )
    assert_clean(ledger, TIMEOUTS)
    assert reconnects.count >= 1  # its node restarted too, and it moved to another


async def test_killing_the_leader_under_load_loses_no_confirmed_request(
    url: str, model_repo: Path, unique_model: str, cluster: Cluster, tmp_path: Path
) -> None:
    """A backlog of confirmed requests no worker takes yet sits in a queue
    when the node leading that queue is killed; a worker started after the
    kill answers every one of them. The load on another model goes on."""
    digits, held = f"{unique_model}-digits", f"{unique_model}-held"
    queue = work_queue(held)
    load = Load(model_repo / digits, digits, ROWS + 20, seed=33)
    backlog = Load(model_repo / digits, held, BACKLOG, seed=34)  # digits, under another name
    serving, holding = tmp_path / "serving", tmp_path / "holding"
    serving.mkdir()
    holding.mkdir()
    (serving / digits).symlink_to(model_repo / digits, target_is_directory=True)
    (holding / held).symlink_to(model_repo / digits, target_is_directory=True)
    ledger, held_ledger = Ledger(), Ledger()
    killed_at = 0.0
    async with running_worker(url, serving), Client(url, timeout=DEADLINE) as client:
        confirmed = Confirmed(client)
        reconnects = Reconnects(client)
        await client.transport.declare_model(held)
        leader = await _leader(cluster, queue)
        waiting = [
            asyncio.ensure_future(
                held_ledger.call(
                    client,
                    held,
                    {"input": backlog.x[i : i + 1]},
                    timeout=HELD_DEADLINE,
                    expect=backlog.expect(i),
                )
            )
            for i in range(BACKLOG)
        ]
        await _confirmed(confirmed, held_ledger, BACKLOG)

        async def kill_the_leader() -> None:
            nonlocal killed_at
            killed_at = time.monotonic()
            await cluster.kill_node(leader)
            new = await cluster.wait_new_leader(queue, leader)
            async with running_worker(url, holding, worker_id="w2"):
                await asyncio.gather(*waiting)
            await wait_flowing(ledger, killed_at)
            print(
                f"rabbitmq cluster: node {leader} (leading the backlog's queue) killed; node"
                f" {new} leads; traffic stood still {outage(ledger, killed_at):.1f}s at most"
            )
            await cluster.start_node(leader)
            await cluster.wait_whole(queue)

        await under_fault(ledger, lambda stop: _load(load, ledger, client, stop), kill_the_leader)
        await serves_again(ledger, client, load, range(ROWS, ROWS + 20), within=60)
    print(
        f"rabbitmq cluster: leader killed: backlog {dict(held_ledger.counts())}, load"
        f" {dict(ledger.counts())}; {len(confirmed.ids)} requests confirmed; client"
        f" reconnected {reconnects.count} times"
    )
    assert_clean(ledger, TIMEOUTS)
    assert held_ledger.counts() == {"ok": BACKLOG}, held_ledger.summary()
    lost = [e for e in ledger.entries if e.id in confirmed.ids and e.outcome != "ok"]
    assert not lost, "confirmed, then not answered:\n" + "\n".join(
        f"  {e.outcome}: {e.id} {e.detail}" for e in lost[:10]
    )


async def _confirmed(confirmed: Confirmed, ledger: Ledger, n: int, within: float = 30.0) -> None:
    """Poll until the broker has confirmed the ``n`` requests of ``ledger``."""
    end = time.monotonic() + within
    while len(ledger.entries) < n or not {e.id for e in ledger.entries} <= confirmed.ids:
        assert time.monotonic() < end, f"the backlog was not confirmed within {within}s"
        await asyncio.sleep(0.05)
