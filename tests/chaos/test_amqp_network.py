"""RabbitMQ behind the fault proxy: latency, a bandwidth cap, resets mid-frame,
a half-open connection, and a memory alarm, each under load.

Client and worker both reach the broker through the proxy. For each fault:
every request is answered correctly or gets a typed error within its deadline
+ 1 s, none is lost or crossed, and afterwards the fleet serves again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from producer import Client
from tests.chaos.conftest import (
    Load,
    assert_clean,
    assert_felt,
    proxied,
    rabbitmqctl,
    serves_again,
    under_fault,
)
from tests.chaos.ledger import Ledger
from tests.chaos.proxy import FaultProxy
from tests.helpers import running_worker

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq]

TIMEOUTS = ("DeadlineExceeded", "Unavailable")


async def test_latency_and_jitter_every_request_answered(
    amqp_url: str, amqp_proxy: FaultProxy, model_repo: Path, unique_model: str
) -> None:
    url = proxied(amqp_url, amqp_proxy.port)
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=11)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=10) as client:
        amqp_proxy.set_latency(0.03, jitter=0.04)
        ledger.fault_started()
        await load.run(ledger, client, range(200), timeout=10)
        amqp_proxy.recover()
        ledger.fault_ended()
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger)  # slow, not broken: every request answered
    assert ledger.counts()["ok"] == 220
    # each way took the added latency at least
    assert min(e.ended - e.sent for e in ledger.entries[:200]) >= 0.06


async def test_bandwidth_cap_answers_or_fails_typed(
    amqp_url: str, amqp_proxy: FaultProxy, model_repo: Path, unique_model: str
) -> None:
    url = proxied(amqp_url, amqp_proxy.port)
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=12)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=6) as client:

        async def squeeze() -> None:
            amqp_proxy.set_bandwidth(8_000)  # bytes/s: a few requests a second
            await asyncio.sleep(6)
            amqp_proxy.recover()

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(200), timeout=6, until=stop),
            squeeze,
        )
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger, TIMEOUTS)
    assert_felt(ledger)


async def test_resets_mid_frame_lose_nothing(
    amqp_url: str, amqp_proxy: FaultProxy, model_repo: Path, unique_model: str
) -> None:
    url = proxied(amqp_url, amqp_proxy.port)
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 420, seed=13)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=8) as client:

        async def resets() -> None:
            for _ in range(3):
                async with asyncio.timeout(30):  # both sides reconnected
                    while amqp_proxy.connections < 2:
                        await asyncio.sleep(0.05)
                amqp_proxy.reset(mid_frame=True)
                await asyncio.sleep(1.5)

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(400), timeout=8, pace=0.02, until=stop),
            resets,
        )
        await serves_again(ledger, client, load, range(400, 420))
    assert amqp_proxy.stats.resets >= 3
    assert_clean(ledger, TIMEOUTS)


async def test_half_open_connection_fails_typed_then_recovers(
    amqp_url: str, amqp_proxy: FaultProxy, model_repo: Path, unique_model: str
) -> None:
    url = proxied(amqp_url, amqp_proxy.port)
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 220, seed=14)
    ledger = Ledger()
    async with running_worker(url, model_repo), Client(url, timeout=3) as client:

        async def partition() -> None:
            amqp_proxy.blackhole()
            await asyncio.sleep(5)  # past every deadline of the requests under way
            amqp_proxy.recover()

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(200), timeout=3, pace=0.02, until=stop),
            partition,
        )
        await serves_again(ledger, client, load, range(200, 220))
    assert_clean(ledger, TIMEOUTS)
    assert ledger.counts()["DeadlineExceeded"] + ledger.counts()["Unavailable"] > 0


async def test_memory_alarm_under_load_fails_typed_then_recovers(
    amqp_url: str, model_repo: Path, unique_model: str
) -> None:
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 320, seed=15)
    ledger = Ledger()
    async with running_worker(amqp_url, model_repo), Client(amqp_url, timeout=4) as client:

        async def alarm() -> None:
            await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.0001")
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.4")

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(300), timeout=4, pace=0.02, until=stop),
            alarm,
        )
        await serves_again(ledger, client, load, range(300, 320))
    assert_clean(ledger, TIMEOUTS)
    assert_felt(ledger)  # publishers were blocked
