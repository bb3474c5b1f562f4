"""The 3-node RabbitMQ cluster of the cluster tier, driven through
``scripts/rabbitmq-cluster.sh`` (``$FLEET_TEST_AMQP_CLUSTER_CTL``) without
blocking the event loop the load runs on, and what a fault did to that load."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiohttp

from fleet import wire
from fleet.contract import Priority
from fleet.transport.base import queue_name
from producer import Client
from tests.chaos.ledger import Ledger

NODES = (1, 2, 3)
POLL = 0.5  # seconds between looks at the cluster


@dataclass(frozen=True)
class QueueState:
    """A queue as the management API shows it: its type, the index of the
    node leading it, its members and those whose Raft server runs."""

    type: str
    leader: int | None
    members: tuple[int, ...]
    online: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> QueueState:
        fields = {k: v.split() for k, _, v in (line.partition(" ") for line in text.splitlines())}
        leader = fields.get("leader") or []
        return cls(
            type=" ".join(fields.get("type") or []),
            leader=int(leader[0]) if leader else None,
            members=tuple(int(n) for n in fields.get("members") or []),
            online=tuple(int(n) for n in fields.get("online") or []),
        )

    @property
    def whole(self) -> bool:
        """Every node a member, every member online, and a leader."""
        return self.members == NODES and self.online == NODES and self.leader in NODES


class Cluster:
    """``scripts/rabbitmq-cluster.sh`` as the environment names it."""

    def __init__(self, ctl: str) -> None:
        self.argv = shlex.split(ctl)

    async def run(self, *args: str, timeout: float = 180.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{' '.join(args)}: no answer within {timeout}s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def check(self, *args: str) -> str:
        rc, out, err = await self.run(*args)
        assert rc == 0, f"rabbitmq-cluster.sh {' '.join(args)} failed ({rc}): {err[-2000:]}"
        return out

    async def stop_node(self, n: int) -> None:
        await self.check("stop-node", str(n))

    async def start_node(self, n: int) -> None:
        await self.check("start-node", str(n))

    async def kill_node(self, n: int) -> None:
        await self.check("kill-node", str(n))

    async def stopped(self) -> list[int]:
        _, out, _ = await self.run("status")
        return [int(line.split()[2]) for line in out.splitlines() if line.startswith("stopped:")]

    async def heal(self) -> None:
        """Start every node that is not running (a test that failed midway)."""
        for n in await self.stopped():
            await self.start_node(n)

    async def queue(self, name: str) -> QueueState | None:
        rc, out, _ = await self.run("members", name, timeout=30)
        return QueueState.parse(out) if rc == 0 else None

    async def wait_queue(
        self, name: str, what: str, ok: Callable[[QueueState], bool], *, within: float = 90.0
    ) -> QueueState:
        """Poll queue ``name`` until ``ok(state)`` holds, at most ``within`` seconds."""
        end = time.monotonic() + within
        state = None
        while True:
            state = await self.queue(name)
            if state is not None and ok(state):
                return state
            assert time.monotonic() < end, f"{name}: not {what} within {within}s: {state}"
            await asyncio.sleep(POLL)

    async def wait_whole(self, name: str, *, within: float = 90.0) -> QueueState:
        return await self.wait_queue(name, "3 members online", lambda s: s.whole, within=within)

    async def wait_new_leader(self, name: str, old: int, *, within: float = 60.0) -> int:
        state = await self.wait_queue(
            name,
            f"led by another node than {old}",
            lambda s: s.leader not in (None, old),
            within=within,
        )
        assert state.leader is not None
        return state.leader


async def delete_queues(url: str, names: Iterable[str]) -> None:
    """Delete queues through the management API the cluster URL names, so
    that the queues of many runs do not pile up (each adds to a node's start)."""
    parts = urlsplit(url)
    api = dict(parse_qsl(parts.query))["management_url"]
    login = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
    headers = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        for name in names:
            async with session.delete(f"{api}/api/queues/%2F/{quote(name, safe='')}") as resp:
                assert resp.status in (204, 404), f"delete {name}: {resp.status}"


def work_queue(model: str) -> str:
    """The queue the load's requests go to (online priority)."""
    return queue_name(model, Priority.ONLINE)


async def wait_flowing(ledger: Ledger, since: float, *, within: float = 60.0) -> None:
    """Poll until a request sent after ``since`` (``time.monotonic()``) has been
    answered correctly, at most ``within`` seconds."""
    end = time.monotonic() + within
    while not any(e.outcome == "ok" and e.sent >= since for e in ledger.entries):
        assert time.monotonic() < end, (
            f"no request sent after the fault was answered within {within}s: {ledger.summary()}"
        )
        await asyncio.sleep(POLL / 5)


def outage(ledger: Ledger, since: float) -> float:
    """Seconds the traffic stood still after ``since``: the longest stretch
    between two correct answers (the first from ``since``)."""
    ends = sorted(e.ended for e in ledger.entries if e.outcome == "ok" and e.ended >= since)
    marks = [since, *ends]
    return max((b - a for a, b in itertools.pairwise(marks)), default=0.0)


class Confirmed:
    """The ids of the requests the broker confirmed: the client's
    ``publish_request`` returned for the message that carried them."""

    def __init__(self, client: Client) -> None:
        self.ids: set[str] = set()
        transport = client.transport
        publish = transport.publish_request

        async def confirmed_publish(model: str, priority: Priority, body: bytes) -> None:
            await publish(model, priority, body)
            self.ids.update(wire.salvage_ids(body)[1])

        transport.publish_request = confirmed_publish  # type: ignore[method-assign]


class Reconnects:
    """How many times the client's transport got a lost connection back."""

    def __init__(self, client: Client) -> None:
        self.count = 0
        client.transport.add_reconnect_listener(self._back)

    def _back(self) -> None:
        self.count += 1


__all__ = [
    "NODES",
    "Cluster",
    "Confirmed",
    "QueueState",
    "Reconnects",
    "delete_queues",
    "outage",
    "wait_flowing",
    "work_queue",
]
