"""A worker whose wall clock is skewed against its client's, in a process of
its own, on RabbitMQ and Kafka.

Requests carry their remaining budget and each side measures it on its own
monotonic clock (see :mod:`fleet.contract`), so a worker behind its clients by
any amount, or ahead by less than ``CLOCK_SKEW_TOLERANCE_S``, answers every
request. A worker ahead by more than the tolerance takes every request for
long expired and computes none: each caller gets ``DeadlineExceeded`` at its
own deadline, and nothing is lost, crossed or hung either way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleet.contract import CLOCK_SKEW_TOLERANCE_S
from producer import Client
from tests.chaos.conftest import Load, assert_clean
from tests.chaos.ledger import Ledger
from tests.helpers import WorkerProcess

pytestmark = [pytest.mark.chaos]

HOUR = 3600.0
TIMEOUT = 4.0


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.parametrize(
    ("skew", "answered"),
    [
        (-HOUR, True),  # behind by any amount: budgets are measured on its monotonic clock
        (CLOCK_SKEW_TOLERANCE_S * 2 / 3, True),  # ahead, within the tolerance
        (HOUR, False),  # ahead past the tolerance: every request looks long expired
    ],
    ids=["behind-1h", "ahead-20s", "ahead-1h"],
)
async def test_a_worker_with_a_skewed_clock(
    broker: str, model_repo: Path, unique_model: str, skew: float, answered: bool
) -> None:
    model = f"{unique_model}-digits"
    load = Load(model_repo / model, model, 40, seed=21)
    command = [sys.executable, "-m", "tests.chaos.skewed_clock", str(skew), "worker"]
    worker = await WorkerProcess(broker, model_repo, "skewed", command=command).start()
    ledger = Ledger()
    try:
        async with Client(broker, timeout=TIMEOUT) as client:
            ledger.fault_started()  # the skew is the fault, for the whole run
            await load.run(ledger, client, range(40), timeout=TIMEOUT)
            ledger.fault_ended()
    finally:
        await worker.stop()
    assert_clean(ledger, () if answered else ("DeadlineExceeded",))
    want = {"ok": 40} if answered else {"DeadlineExceeded": 40}
    assert ledger.counts() == want, ledger.summary()
