"""Faults on both brokers: a paused worker, a paused Kafka broker, oversize
requests, malformed items inside otherwise good frames.

Kafka is not behind the fault proxy: the broker advertises its own listener
(``advertised.listeners`` in ``scripts/kafka.sh``), so after the bootstrap
request the client connects to 127.0.0.1:9092 directly and a plain TCP proxy
sees nothing. Network faults on Kafka are covered by pausing the broker
process (SIGSTOP past the request timeout, then SIGCONT) instead.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import Priority, Reply, Request, new_request_id
from fleet.errors import ErrorCode, InvalidArgument, LimitExceeded
from fleet.tensor import Tensor
from producer import Client
from tests.chaos.conftest import Load, assert_clean, assert_felt, serves_again, under_fault
from tests.chaos.ledger import Ledger
from tests.conftest import broker_url_for
from tests.helpers import WorkerProcess, rows, running_worker

pytestmark = pytest.mark.chaos

TIMEOUTS = ("DeadlineExceeded", "Unavailable")
BROKER = [
    pytest.param("amqp", marks=pytest.mark.rabbitmq),
    pytest.param("kafka", marks=pytest.mark.kafka),
]


@pytest.fixture(params=BROKER)
def url(request: pytest.FixtureRequest, kafka_url: str) -> str:
    if request.param == "kafka":
        return kafka_url
    return broker_url_for("amqp")


async def test_paused_worker_past_the_deadline_then_resumed(
    url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    load = Load(model_repo / digits, digits, 220, seed=21)
    ledger = Ledger()
    worker = await WorkerProcess(url, model_repo, "paused").start()
    try:
        async with Client(url, timeout=3) as client:

            async def pause() -> None:
                worker.signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(6)  # twice the deadline
                finally:
                    worker.signal(signal.SIGCONT)

            await under_fault(
                ledger,
                lambda stop: load.run(ledger, client, range(200), timeout=3, pace=0.02, until=stop),
                pause,
            )
            await serves_again(ledger, client, load, range(200, 220), within=60)
        assert worker.proc is not None and worker.proc.returncode is None  # it lived through it
    finally:
        await worker.stop()
    assert_clean(ledger, TIMEOUTS)
    assert ledger.counts()["DeadlineExceeded"] > 0  # the pause was felt, and reported


@pytest.mark.kafka
async def test_kafka_broker_paused_past_request_timeout_then_resumed(
    kafka_url: str,
    model_repo: Path,
    unique_model: str,
    paused_kafka: Callable[[float], Awaitable[None]],
) -> None:
    digits = f"{unique_model}-digits"
    load = Load(model_repo / digits, digits, 220, seed=22)
    ledger = Ledger()
    async with running_worker(kafka_url, model_repo), Client(kafka_url, timeout=3) as client:
        await under_fault(
            ledger,
            lambda stop: load.run(ledger, client, range(200), timeout=3, pace=0.02, until=stop),
            lambda: paused_kafka(4.0),  # request timeout is 2 s
        )
        await serves_again(ledger, client, load, range(200, 220), within=60)
    assert_clean(ledger, TIMEOUTS)
    assert_felt(ledger)


async def test_oversize_request_fails_typed_and_spares_the_others(
    url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    load = Load(model_repo / digits, digits, 40, seed=23)
    ledger = Ledger(grace=0.0)
    async with running_worker(url, model_repo), Client(url, timeout=10) as client:
        limit = client.transport.max_message_bytes
        big = rows(64, limit // 256 + 16, seed=5)  # just over the broker's limit
        t0 = time.monotonic()
        oversize = ledger.call(
            client, digits, {"input": big}, timeout=10, expect_error=LimitExceeded
        )
        await asyncio.gather(oversize, load.run(ledger, client, range(40), timeout=10))
        assert time.monotonic() - t0 < 30  # every call ended by its 10 s deadline
    assert_clean(ledger, ("LimitExceeded",))
    assert ledger.counts() == {"ok": 40, "LimitExceeded": 1}


async def test_malformed_items_in_good_frames_get_typed_errors(
    url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 3, seed=24)
    replies: asyncio.Queue[wire.Frame] = asyncio.Queue()
    async with running_worker(url, model_repo), Client(url, timeout=10) as client:
        transport = client.transport
        inbox = await transport.open_inbox(
            lambda body: replies.put_nowait(wire.decode_replies(body))
        )
        good = [_request(digits, x[i : i + 1]) for i in range(3)]
        bad_id = new_request_id()
        damaged = [  # an id, then bytes that are no request
            struct.pack("<H", len(bad_id)) + bad_id.encode(),
            b"\x00\xff\x13garbage",
        ]
        wrong_dtype = _request(digits, x[:1].astype(np.float64))
        frame = wire.encode_requests(
            [
                wire.encode_request_body(good[0]),
                damaged,
                wire.encode_request_body(good[1]),
                wire.encode_request_body(wrong_dtype),
                wire.encode_request_body(good[2]),
            ],
            inbox,
        )
        await transport.publish_request(digits, Priority.ONLINE, frame)
        got = await _collect(replies, 5)
        # the client's own requests are unaffected meanwhile
        out = await client.infer(digits, {"input": x[:1]})
        assert out["label"].shape == (1,)
    for r in good:
        assert got[r.id].error is None, got[r.id].error
    damaged_error = got[bad_id].error
    assert damaged_error is not None
    assert damaged_error.code == ErrorCode.INVALID_ARGUMENT
    dtype_error = got[wrong_dtype.id].error
    assert dtype_error is not None
    assert isinstance(dtype_error.to_exception(), InvalidArgument)


def _request(model: str, x: np.ndarray) -> Request:
    now = time.time()
    return Request(
        id=new_request_id(),
        model=model,
        version=None,
        inputs=(Tensor.from_numpy("input", x),),
        deadline=now + 10,
        priority=Priority.ONLINE,
        parameters={},
        sent_at=now,
    )


async def _collect(replies: asyncio.Queue[wire.Frame], n: int) -> dict[str, Reply]:
    got: dict[str, Reply] = {}
    async with asyncio.timeout(11):  # the deadline + 1 s
        while len(got) < n:
            frame = await replies.get()
            for item in frame.items:
                assert isinstance(item, Reply), item
                assert item.id not in got, f"two replies for {item.id}"
                got[item.id] = item
    return got
