"""A worker started before its broker answers: it waits, alive and not ready."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from structlog.testing import capture_logs

from fleet.errors import ConfigError, Unavailable
from fleet.transport.base import wait_until
from fleet.transport.memory import MemoryBroker
from fleetctl.worker_cmd import serve
from producer import Client
from tests.conftest import broker_url_for
from tests.helpers import rows
from worker.health import HEALTH_PATH, READY_PATH
from worker.lifecycle import (
    Backoff,
    BrokerRefused,
    BrokerUnreachable,
    BrokerWait,
    refused_credentials,
)
from worker.service import Worker, WorkerSettings

PASSWORD = "s3cr3t-pw"
URL = f"amqp://fleet:{PASSWORD}@mq.example:5672/"


class ProbableAuthenticationError(ConnectionError):
    """Named like aiormq's: what RabbitMQ's ACCESS_REFUSED becomes."""


class FakeTransport:
    """``connect`` raises each of ``failures`` in turn, then succeeds."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.connects = 0
        self.closed = False
        self.connected = False

    async def connect(self) -> None:
        self.connects += 1
        if self.failures:
            raise self.failures.pop(0)
        self.connected = True

    async def close(self) -> None:
        self.closed = True


class FakeTime:
    """A clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def _wait(time: FakeTime, *, timeout: float | None = None, seed: int = 7) -> BrokerWait:
    return BrokerWait(
        URL,
        backoff=Backoff(initial=0.5, cap=4.0),
        timeout=timeout,
        rng=random.Random(seed),
        sleep=time.sleep,
        clock=time.clock,
    )


def _unreachable() -> Unavailable:
    return Unavailable(f"connect to RabbitMQ at amqp://mq.example:5672/ failed ({PASSWORD})")


@pytest.mark.unit
def test_backoff_doubles_up_to_its_cap_with_jitter_below_each_step() -> None:
    backoff = Backoff(initial=0.5, cap=4.0)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 4, 4, 4]
    assert backoff.ceiling(10_000) == 4.0  # no overflow
    rng = random.Random(1)
    for attempt in range(1, 50):
        delay = backoff.delay(attempt, rng)
        assert backoff.ceiling(attempt) / 2 <= delay <= backoff.ceiling(attempt)
    # jitter: two workers (two generators) do not wait alike
    a, b = random.Random(1), random.Random(2)
    assert [backoff.delay(3, a) for _ in range(5)] != [backoff.delay(3, b) for _ in range(5)]
    with pytest.raises(ConfigError):
        Backoff(initial=5, cap=1)


@pytest.mark.unit
async def test_retries_until_the_broker_answers_and_logs_each_delay() -> None:
    time = FakeTime()
    transport = FakeTransport(*[_unreachable() for _ in range(5)])
    wait = _wait(time)
    with capture_logs() as logs:
        await wait.connect(transport)  # type: ignore[arg-type]
    assert transport.connected and not transport.closed
    assert wait.attempts == transport.connects == 6
    assert wait.status is None
    retries = [e for e in logs if e["event"] == "broker.unreachable"]
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4, 5]
    assert [e["next_delay_s"] for e in retries] == [round(d, 3) for d in time.sleeps]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, time.sleeps, strict=True))
    assert PASSWORD not in repr(logs)
    assert all(e["broker"] == "amqp://fleet:***@mq.example:5672/" for e in retries)


@pytest.mark.unit
async def test_status_says_it_waits_while_it_waits() -> None:
    seen: list[str | None] = []
    wait = BrokerWait(URL, backoff=Backoff(initial=0.5, cap=1.0), rng=random.Random(0))

    async def sleep(_delay: float) -> None:
        seen.append(wait.status)

    wait._sleep = sleep
    await wait.connect(FakeTransport(_unreachable(), _unreachable()))  # type: ignore[arg-type]
    assert len(seen) == 2
    assert all(s is not None and s.startswith("waiting for the broker") for s in seen)
    assert seen[0] is not None and "attempt 1 failed" in seen[0]
    assert wait.status is None


@pytest.mark.unit
async def test_refused_credentials_end_the_wait_at_once() -> None:
    time = FakeTime()
    refusal = Unavailable("connect to RabbitMQ at amqp://mq.example:5672/")
    refusal.__cause__ = ProbableAuthenticationError("ACCESS_REFUSED")
    transport = FakeTransport(_unreachable(), refusal)
    with pytest.raises(BrokerRefused) as caught:
        await _wait(time).connect(transport)  # type: ignore[arg-type]
    assert isinstance(caught.value, ConfigError) and not caught.value.retriable
    assert "refused the credentials" in caught.value.message
    assert PASSWORD not in caught.value.message
    assert transport.connects == 2 and len(time.sleeps) == 1
    assert transport.closed


@pytest.mark.unit
async def test_a_bad_setting_ends_the_wait_at_once() -> None:
    time = FakeTime()
    transport = FakeTransport(ConfigError("Kafka URL 'kafka://' must look like host:port"))
    with pytest.raises(ConfigError, match="must look like"):
        await _wait(time).connect(transport)  # type: ignore[arg-type]
    assert transport.connects == 1 and time.sleeps == [] and transport.closed


@pytest.mark.unit
async def test_the_wait_is_bounded_by_its_timeout() -> None:
    time = FakeTime()
    transport = FakeTransport(*[_unreachable() for _ in range(100)])
    with pytest.raises(BrokerUnreachable) as caught:
        await _wait(time, timeout=10.0).connect(transport)  # type: ignore[arg-type]
    assert isinstance(caught.value, Unavailable)
    assert time.now == pytest.approx(10.0)  # the last sleep ends at the deadline
    assert transport.connects == len(time.sleeps) + 1
    assert f"{transport.connects} attempts" in caught.value.message
    assert PASSWORD not in caught.value.message
    assert transport.closed


@pytest.mark.unit
def test_credentials_refusal_is_found_along_the_causes() -> None:
    inner = ProbableAuthenticationError("ACCESS_REFUSED")
    outer = Unavailable("connect failed")
    outer.__cause__ = inner
    assert refused_credentials(outer)
    assert not refused_credentials(_unreachable())


# ---------------------------------------------------------------- a real worker


def _settings(url: str, models: Path, **more: Any) -> WorkerSettings:
    given: dict[str, Any] = {"broker_retry_initial": 0.01, "broker_retry_max": 0.05, **more}
    return WorkerSettings(broker=url, models=models, worker_id="boot", http_port=0, **given)


async def _get(port: int | None, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as r,
    ):
        return r.status, await r.text()


@pytest.mark.memory
async def test_worker_waits_for_its_broker_alive_and_not_ready(
    model_repo: Path, unique_model: str
) -> None:
    url = f"memory://{unique_model}"
    broker = MemoryBroker.get(unique_model)
    broker.up = False  # the broker does not answer yet
    worker = Worker(_settings(url, model_repo))
    starting = asyncio.ensure_future(worker.start())
    try:
        assert await wait_until(lambda: worker.boot is not None and worker.boot.attempts >= 3, 30)
        assert not starting.done()
        assert (await _get(worker.http_port, HEALTH_PATH))[0] == 200
        status, text = await _get(worker.http_port, READY_PATH)
        body = json.loads(text)
        assert status == 503 and body["ready"] is False
        assert body["status"].startswith("waiting for the broker")
        providers = {m: v["1"]["provider"] for m, v in body["models"].items()}
        assert providers == {
            f"{unique_model}-digits": "CPUExecutionProvider",
            f"{unique_model}-mlp": "CPUExecutionProvider",
        }
        _, metrics = await _get(worker.http_port, "/metrics")
        failed = re.search(
            r'fleet_worker_broker_connect_attempts_total\{outcome="failed"\} (\S+)', metrics
        )
        assert failed is not None and float(failed.group(1)) >= 2
        assert (
            f'fleet_worker_model_provider{{model="{unique_model}-mlp",'
            'provider="CPUExecutionProvider",version="1"} 1.0'
        ) in metrics

        broker.up = True
        await asyncio.wait_for(starting, 30)
        status, text = await _get(worker.http_port, READY_PATH)
        assert status == 200 and json.loads(text)["ready"] is True
        async with Client(url) as client:
            reply = await client.infer(f"{unique_model}-digits", {"input": rows(64, 3)})
        assert reply["label"].shape == (3,)
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await worker.stop()
        MemoryBroker.reset(unique_model)


@pytest.mark.memory
async def test_a_stop_while_waiting_for_the_broker_exits_zero(
    model_repo: Path, unique_model: str
) -> None:
    url = f"memory://{unique_model}"
    MemoryBroker.get(unique_model).up = False
    worker = Worker(_settings(url, model_repo, broker_retry_initial=60, broker_retry_max=60))
    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve(worker, stop))
    try:
        # in its first sleep, of 30 to 60 s
        assert await wait_until(lambda: worker.boot is not None and worker.boot.status, 30)
        stop.set()
        assert await asyncio.wait_for(serving, 10) == 0
        assert worker.state == "stopped"
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        MemoryBroker.reset(unique_model)


@pytest.mark.memory
async def test_a_worker_gives_up_once_its_wait_runs_out(
    model_repo: Path, unique_model: str
) -> None:
    url = f"memory://{unique_model}"
    MemoryBroker.get(unique_model).up = False
    worker = Worker(_settings(url, model_repo, broker_wait_timeout=0.05))
    try:
        with pytest.raises(BrokerUnreachable, match=r"still unreachable after 0\.05 s"):
            await serve(worker, asyncio.Event())
        assert worker.state == "stopped"
        assert worker.boot is not None and worker.boot.attempts >= 2
    finally:
        MemoryBroker.reset(unique_model)


# ---------------------------------------------------------------- RabbitMQ


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest.mark.rabbitmq
async def test_worker_started_before_rabbitmq_listens_serves_once_it_does(
    model_repo: Path, unique_model: str
) -> None:
    """The worker's port is closed (bound, not listening: connections are
    refused) until the test makes it a TCP relay to the real broker."""
    real = urlsplit(broker_url_for("amqp"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    relayed = real._replace(netloc=f"{real.username}:{real.password}@127.0.0.1:{port}")
    pipes: set[asyncio.Task[None]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(real.hostname, real.port)
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(_forward(a, b))
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    worker = Worker(_settings(relayed.geturl(), model_repo))
    starting = asyncio.ensure_future(worker.start())
    server: asyncio.Server | None = None
    try:
        assert await wait_until(lambda: worker.boot is not None and worker.boot.attempts >= 2, 30)
        assert (await _get(worker.http_port, READY_PATH))[0] == 503
        server = await asyncio.start_server(relay, sock=sock)  # the port opens
        await asyncio.wait_for(starting, 60)
        assert (await _get(worker.http_port, READY_PATH))[0] == 200
        async with Client(real.geturl()) as client:
            reply = await client.infer(f"{unique_model}-digits", {"input": rows(64, 2)})
        assert reply["label"].shape == (2,)
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await worker.stop()
        if server is not None:
            server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        sock.close()


@pytest.mark.rabbitmq
async def test_credentials_rabbitmq_refuses_end_the_start(model_repo: Path) -> None:
    real = urlsplit(broker_url_for("amqp"))
    wrong = real._replace(netloc=f"{real.username}:{PASSWORD}@{real.hostname}:{real.port}")
    worker = Worker(_settings(wrong.geturl(), model_repo))
    with capture_logs() as logs, pytest.raises(BrokerRefused) as caught:
        await serve(worker, asyncio.Event())
    assert worker.boot is not None and worker.boot.attempts == 1
    assert worker.state == "stopped"
    assert PASSWORD not in caught.value.message and PASSWORD not in repr(logs)
