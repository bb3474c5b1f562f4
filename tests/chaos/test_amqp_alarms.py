"""RabbitMQ's resource alarms under load: with memory or disk over its limit
the broker blocks every publisher; requests fail with a typed error within
their deadline + 1 s or are answered once the alarm clears, none is lost or
crossed, and afterwards the fleet serves again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from producer import Client
from tests.chaos.conftest import (
    Load,
    assert_clean,
    assert_felt,
    rabbitmqctl,
    serves_again,
    under_fault,
)
from tests.chaos.ledger import Ledger
from tests.helpers import running_worker

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq, pytest.mark.exclusive]

TIMEOUTS = ("DeadlineExceeded", "Unavailable")


# each alarm: how to raise it, and how to clear it again (the script's settings)
ALARMS = {
    "memory": (("set_vm_memory_high_watermark", "0.0001"), ("set_vm_memory_high_watermark", "0.4")),
    "disk": (("set_disk_free_limit", "100000GB"), ("set_disk_free_limit", "50MB")),
}


@pytest.mark.parametrize("resource", sorted(ALARMS))
async def test_resource_alarm_under_load_fails_typed_then_recovers(
    amqp_url: str, model_repo: Path, unique_model: str, resource: str
) -> None:
    raise_it, clear_it = ALARMS[resource]
    load = Load(model_repo / f"{unique_model}-digits", f"{unique_model}-digits", 320, seed=15)
    ledger = Ledger()
    async with running_worker(amqp_url, model_repo), Client(amqp_url, timeout=4) as client:

        async def alarm() -> None:
            await asyncio.to_thread(rabbitmqctl, *raise_it)
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.to_thread(rabbitmqctl, *clear_it)

        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(300), timeout=4, pace=0.02, until=stop),
            alarm,
        )
        await serves_again(ledger, client, load, range(300, 320))
    assert_clean(ledger, TIMEOUTS)
    assert_felt(ledger)  # publishers were blocked
