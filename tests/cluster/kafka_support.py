"""The 3-broker Kafka cluster of the cluster tier: its control script
(``scripts/kafka-cluster.sh``), what its metadata says (replicas, leaders, the
in-sync replicas), and which requests its brokers confirmed."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from fleet import wire
from fleet.contract import Priority
from fleet.transport.base import queue_name
from producer import Client
from tests.chaos.ledger import Ledger

NODES = (1, 2, 3)
OFFSETS_TOPIC = "__consumer_offsets"


class KafkaCluster:
    """The cluster at ``url`` (three bootstrap hosts), driven by ``ctl``: the
    command line of its control script."""

    def __init__(self, url: str, ctl: str) -> None:
        self.url = url
        self.ctl = ctl
        self.hosts = urlsplit(url).netloc.rpartition("@")[2].split(",")

    async def run(self, *args: str, timeout: float = 150.0) -> str:
        """``ctl args``; its standard output. A non-zero exit fails the test."""
        cmd = " ".join([self.ctl, *(shlex.quote(a) for a in args)])
        proc = await asyncio.create_subprocess_shell(
            cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{cmd!r} did not end within {timeout}s") from None
        assert proc.returncode == 0, f"{cmd!r} exited {proc.returncode}: {err.decode()[-2000:]}"
        return out.decode()

    async def all_running(self) -> bool:
        """Whether all three nodes run (the script's ``status``)."""
        proc = await asyncio.create_subprocess_shell(
            f"{self.ctl} status",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30) == 0

    async def leader(self, topic: str, partition: int) -> int:
        """The node leading ``partition`` of ``topic`` (the script's ``leader``)."""
        return int((await self.run("leader", topic, str(partition))).strip())

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.hosts, request_timeout_ms=3000)
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()

    async def partitions(
        self, topics: Sequence[str], within: float = 10.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """Every partition of ``topics`` as the metadata describes it (leader,
        replicas, isr); a topic that still has an error or no partitions after
        ``within`` seconds fails the test. The broker asked may not know a
        topic yet: one made a moment ago, or any, right after its restart."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        async with self.admin() as admin:
            while True:
                described = await asyncio.wait_for(admin.describe_topics(list(topics)), 10)
                ready = all(t["error_code"] == 0 and t["partitions"] for t in described)
                if ready or loop.time() > end:
                    break
                await asyncio.sleep(0.2)
        out: list[tuple[str, dict[str, Any]]] = []
        for t in described:
            assert t["error_code"] == 0 and t["partitions"], f"topic {t['topic']}: {t}"
            out.extend((t["topic"], p) for p in t["partitions"])
        assert {name for name, _ in out} == set(topics), described
        return out

    async def topic_config(self, topic: str) -> dict[str, str]:
        async with self.admin() as admin:
            described = await asyncio.wait_for(
                admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]), 10
            )
        return {c[0]: c[1] for c in described[0].resources[0][4]}

    async def holding_partition(self, topic: str) -> int:
        """A partition of ``topic`` that holds records (its end offset is past
        0); fails the test when none does."""
        parts = sorted(p["partition"] for _, p in await self.partitions([topic]))
        reader = AIOKafkaConsumer(bootstrap_servers=self.hosts, enable_auto_commit=False)
        await reader.start()
        try:
            tps = [TopicPartition(topic, p) for p in parts]
            end = await asyncio.wait_for(reader.end_offsets(tps), 10)
        finally:
            await reader.stop()
        filled = [tp.partition for tp in tps if end[tp] > 0]
        assert filled, f"no records in {topic}: {end}"
        return int(filled[0])

    async def wait_fenced(self, node: int, within: float = 60.0) -> None:
        """Return once the cluster's metadata no longer lists ``node`` (the
        controller fenced it); fail after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        async with self.admin() as admin:
            while True:
                try:
                    brokers = (await asyncio.wait_for(admin.describe_cluster(), 5))["brokers"]
                except (KafkaError, OSError, TimeoutError):  # asked the node that is gone
                    brokers = None
                if brokers is not None and node not in {b["node_id"] for b in brokers}:
                    return
                assert loop.time() < end, f"node {node} still listed after {within}s: {brokers}"
                await asyncio.sleep(0.2)

    async def delete_topics(self, prefix: str) -> None:
        """Delete the topics whose names start with ``prefix``: a test's topics
        would otherwise pile up in the cluster, and every start and stop of a
        node takes longer with each partition it holds."""
        async with self.admin() as admin:
            names = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if names:
                await asyncio.wait_for(admin.delete_topics(names), 30)

    async def wait_in_sync(self, node: int, topics: Sequence[str], within: float = 60.0) -> None:
        """Return once ``node`` is in the in-sync replicas of every partition of
        ``topics``; fail after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        behind: list[str] = []
        while True:
            try:
                parts = await self.partitions(topics, within=0)  # this loop waits
            except (AssertionError, OSError, TimeoutError) as exc:  # metadata moving
                behind = [repr(exc)]
            else:
                behind = [f"{t}[{p['partition']}]" for t, p in parts if node not in p["isr"]]
                if not behind:
                    return
            assert loop.time() < end, f"node {node} not in sync within {within}s: {behind[:8]}"
            await asyncio.sleep(0.5)


def fleet_topics(model: str) -> list[str]:
    """The topics a worker and client of ``model`` use, and the group offsets."""
    return [
        *(queue_name(model, p) for p in Priority),
        "fleet.replies",
        "fleet.heartbeats",
        "fleet.dead-letter",
        OFFSETS_TOPIC,
    ]


class Confirmed:
    """The ids of the requests whose publish the brokers confirmed (acks=all):
    those must be answered whatever happens to a node afterwards."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def watch(self, client: Client) -> None:
        transport = client.transport
        publish = transport.publish_request

        async def confirmed(model: str, priority: Priority, body: bytes) -> None:
            await publish(model, priority, body)  # raises unless confirmed
            self.ids.update(wire.salvage_ids(body)[1])

        transport.publish_request = confirmed  # type: ignore[method-assign]

    async def reach(self, count: int, within: float = 30.0) -> None:
        """Wait until ``count`` requests were confirmed; fail after ``within`` s."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while len(self.ids) < count:
            assert loop.time() < end, f"{len(self.ids)} of {count} confirmed in {within}s"
            await asyncio.sleep(0.05)

    def unanswered(self, ledger: Ledger) -> list[str]:
        """Confirmed requests of ``ledger`` that did not end ``ok``."""
        return [
            f"{e.outcome}: {e.id} {e.detail}"
            for e in ledger.entries
            if e.id in self.ids and e.outcome != "ok"
        ]


def longest_stall(ledger: Ledger, since: float) -> float:
    """The longest time, from ``since`` on, in which no request was answered:
    how long traffic stopped flowing (``time.monotonic()`` seconds)."""
    answered = sorted(e.ended for e in ledger.entries if e.outcome == "ok" and e.ended >= since)
    if not answered:
        return float("inf")
    marks = [since, *answered]
    return max(b - a for a, b in pairwise(marks))


def first_answer_after(ledger: Ledger, since: float) -> float | None:
    """Seconds from ``since`` until a request sent at or after it was
    answered; None while none was."""
    ends = [e.ended for e in ledger.entries if e.outcome == "ok" and e.sent >= since]
    return min(ends) - since if ends else None


async def flowing_again(ledger: Ledger, since: float, within: float = 60.0) -> float:
    """Wait until a request sent at or after ``since`` is answered (the load
    runs meanwhile); the seconds that took. Fails after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (took := first_answer_after(ledger, since)) is None:
        assert loop.time() < end, f"no request answered within {within}s: {ledger.summary()}"
        await asyncio.sleep(0.1)
    return took


__all__ = [
    "NODES",
    "Confirmed",
    "KafkaCluster",
    "first_answer_after",
    "fleet_topics",
    "flowing_again",
    "longest_stall",
]
