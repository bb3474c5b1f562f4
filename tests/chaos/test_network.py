"""RabbitMQ and Kafka behind the fault proxy: latency, a bandwidth cap, resets
mid-frame and a half-open connection, each under load.

Client and worker both reach the broker through the proxy (on Kafka through a
second listener of the broker that advertises the proxy's port, so that every
connection passes through it, not only the bootstrap one). For each fault:
every request is answered correctly or gets a typed error within its deadline
+ 1 s, none is lost or crossed, and afterwards the fleet serves again.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from producer import Client
from tests.chaos.conftest import (
    Load,
    assert_clean,
    assert_felt,
    proxied,
    serves_again,
    under_fault,
)
from tests.chaos.ledger import Ledger
from tests.chaos.proxy import FaultProxy
from tests.helpers import WorkerProcess, running_worker

pytestmark = [pytest.mark.chaos]

TIMEOUTS = ("DeadlineExceeded", "Unavailable")


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
        # the Kafka proxy listens on the fixed port the broker advertises:
        # one test at a time (the fixture is looked up by name, so the lock
        # cannot see it among the test's fixtures)
        pytest.param("kafka", marks=[pytest.mark.kafka, pytest.mark.exclusive]),
    ]
)
def route(request: pytest.FixtureRequest) -> tuple[str, FaultProxy]:
    """The broker's URL through its fault proxy, and the proxy."""
    kind = str(request.param)
    url: str = request.getfixturevalue(f"{kind}_url")
    proxy: FaultProxy = request.getfixturevalue(f"{kind}_proxy")
    return proxied(url, proxy.port), proxy


async def test_latency_and_jitter_every_request_answered(
    route: tuple[str, FaultProxy], model_repo: Path, unique_model: str
) -> None:
    url, proxy = route
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=11)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=10) as client:
        proxy.set_latency(0.03, jitter=0.04)
        ledger.fault_started()
        await load.run(ledger, client, range(200), timeout=10)
        proxy.recover()
        ledger.fault_ended()
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger)  # slow, not broken: every request answered
    assert ledger.counts()["ok"] == 220
    # each way took the added latency at least
    assert min(e.ended - e.sent for e in ledger.entries[:200]) >= 0.06


async def test_bandwidth_cap_answers_or_fails_typed(
    route: tuple[str, FaultProxy], model_repo: Path, unique_model: str
) -> None:
    url, proxy = route
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=12)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=6) as client:

        async def squeeze() -> None:
            proxy.set_bandwidth(8_000)  # bytes/s: a few requests a second
            await asyncio.sleep(6)
            proxy.recover()

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(200), timeout=6, until=stop),
            squeeze,
        )
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger, TIMEOUTS)
    assert_felt(ledger)


async def test_resets_mid_frame_lose_nothing(
    route: tuple[str, FaultProxy], model_repo: Path, unique_model: str
) -> None:
    url, proxy = route
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 420, seed=13)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=8) as client:

        async def resets() -> None:
            for _ in range(3):
                async with asyncio.timeout(30):  # both sides reconnected (two connections each)
                    while proxy.connections < 4:
                        await asyncio.sleep(0.05)
                proxy.reset(mid_frame=True)
                await asyncio.sleep(1.5)

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(400), timeout=8, pace=0.02, until=stop),
            resets,
        )
        await serves_again(ledger, client, load, range(400, 420))
    assert proxy.stats.resets >= 3
    assert_clean(ledger, TIMEOUTS)


async def test_half_open_connection_fails_typed_then_recovers(
    route: tuple[str, FaultProxy], model_repo: Path, unique_model: str
) -> None:
    url, proxy = route
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=14)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=3) as client:

        async def partition() -> None:
            proxy.blackhole()
            await asyncio.sleep(5)  # past every deadline of the requests under way
            proxy.recover()

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(200), timeout=3, pace=0.02, until=stop),
            partition,
        )
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger, TIMEOUTS)
    assert ledger.counts()["DeadlineExceeded"] + ledger.counts()["Unavailable"] > 0
    # nothing is answered while the proxy forwards nothing: no connection of
    # client or worker bypasses it (on Kafka: the advertised listener works)
    through = [
        e
        for e in ledger.entries
        for a, b in ledger.faults
        if e.outcome == "ok" and e.sent >= a and e.ended <= b
    ]
    assert not through, f"{len(through)} answered through a blackholed proxy"


async def test_a_worker_stopped_while_its_broker_is_down_exits_cleanly(
    route: tuple[str, FaultProxy], model_repo: Path, unique_model: str
) -> None:
    """SIGTERM while every connection to the broker is refused (its consumer's
    fetches failing and backing off, its reconnects failing): the worker
    drains what it holds, gives up on the broker within its own timeouts and
    exits 0, with no error but the broker's absence logged."""
    url, proxy = route
    digits = f"{unique_model}-digits"
    load = Load(model_repo / digits, digits, 1, seed=15)
    worker = await WorkerProcess(url, model_repo, "offline").start()
    try:
        async with Client(url, timeout=30) as client:  # it serves first
            ledger = Ledger()
            await load.run(ledger, client, range(1), timeout=30)
            assert ledger.counts() == {"ok": 1}
        proxy.refuse()
        await asyncio.sleep(2.0)  # the worker's connections fail meanwhile
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=120) == 0
        events = [line.get("event") for line in worker.lines]
        assert "worker stopped" in events, events[-20:]
        # the broker libraries' warnings too: JSON lines, no text a shipper cannot parse
        text = [line["event"] for line in worker.lines if "level" not in line]
        assert not text, "\n".join(str(t) for t in text[:40])
    finally:
        proxy.recover()
        await worker.stop()
