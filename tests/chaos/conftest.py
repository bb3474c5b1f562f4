"""Fixtures of the chaos tier: brokers (from the environment, as every tier),
a fault proxy in front of RabbitMQ, the broker processes to pause, and the
load that runs while a fault is on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy.typing as npt
import pytest

from producer import Client
from tests.chaos.ledger import Ledger
from tests.chaos.proxy import FaultProxy
from tests.conftest import ROOT, broker_url_for, missing
from tests.helpers import direct_onnx, rows

RMQ_BIN = Path("/usr/lib/rabbitmq/bin")
KAFKA_PIDFILE = ROOT / ".cache" / "kafka" / "kafka.pid"
# scripts/kafka.sh: a second listener that advertises the proxy's port
KAFKA_PROXIED_PORT = int(os.environ.get("FLEET_KAFKA_PROXIED_PORT", "9094"))
KAFKA_PROXY_PORT = int(os.environ.get("FLEET_KAFKA_PROXY_PORT", "9095"))


def with_query(url: str, **params: object) -> str:
    parts = urlsplit(url)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def proxied(url: str, port: int) -> str:
    """``url`` with its host:port replaced by the proxy's (credentials kept)."""
    parts = urlsplit(url)
    creds = parts.netloc.rpartition("@")[0]
    netloc = f"{creds}@127.0.0.1:{port}" if creds else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def amqp_url() -> str:
    return broker_url_for("amqp")


@pytest.fixture
def kafka_url() -> str:
    # a short request timeout, so a paused broker is noticed within the tests' deadlines
    return with_query(broker_url_for("kafka"), publish_timeout=2)


@pytest.fixture
async def amqp_proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(amqp_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672, seed=7) as proxy:
        yield proxy


@pytest.fixture
async def kafka_proxy(kafka_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy on the port the broker's second listener advertises, so
    that every connection a Kafka client makes (not only the bootstrap one)
    passes through it."""
    host = urlsplit(kafka_url).hostname or "127.0.0.1"
    try:
        _, writer = await asyncio.open_connection(host, KAFKA_PROXIED_PORT)
    except OSError:
        missing(
            f"no Kafka listener on {host}:{KAFKA_PROXIED_PORT} advertising port "
            f"{KAFKA_PROXY_PORT}: start the broker with scripts/kafka.sh"
        )
    writer.close()
    proxy = FaultProxy(host, KAFKA_PROXIED_PORT, seed=7, listen_port=KAFKA_PROXY_PORT)
    async with proxy:
        yield proxy


def rabbitmqctl(*args: str) -> None:
    """``rabbitmqctl`` against the node ``scripts/rabbitmq.sh`` runs."""
    if not (RMQ_BIN / "rabbitmqctl").exists():
        missing("rabbitmqctl is not installed: run scripts/rabbitmq.sh start")
    node = os.environ.get("FLEET_RABBITMQ_NODENAME", "fleet@localhost")
    base = Path(os.environ.get("FLEET_RABBITMQ_DIR", ROOT / ".cache" / "rabbitmq"))
    env = {
        **os.environ,
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
    }
    subprocess.run(
        [str(RMQ_BIN / "rabbitmqctl"), "-n", node, *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def kafka_pid() -> int:
    """The broker process ``scripts/kafka.sh`` started (its pid file)."""
    try:
        pid = int(KAFKA_PIDFILE.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        missing(f"no Kafka broker pid in {KAFKA_PIDFILE}: run scripts/kafka.sh start")
    if b"kafka.Kafka" not in cmdline:
        missing(f"pid in {KAFKA_PIDFILE} is not the Kafka broker")
    return pid


@pytest.fixture
def paused_kafka() -> Iterator[Callable[[float], Awaitable[None]]]:
    """An async callable pausing the Kafka broker (SIGSTOP) for some seconds;
    the broker is always resumed, even when the test fails."""
    pid = kafka_pid()

    async def pause(seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    try:
        yield pause
    finally:
        os.kill(pid, signal.SIGCONT)


class Load:
    """Distinct rows of the digits model and their ONNX Runtime outputs."""

    def __init__(self, model_dir: Path, model: str, n: int, seed: int) -> None:
        self.model = model
        self.x = rows(64, n, seed=seed)
        self.want = direct_onnx(model_dir, {"input": self.x})

    def expect(self, i: int) -> dict[str, npt.NDArray[Any]]:
        return {k: v[i : i + 1] for k, v in self.want.items()}

    async def run(
        self,
        ledger: Ledger,
        client: Client,
        indices: range,
        *,
        timeout: float,
        concurrency: int = 16,
        pace: float = 0.0,
        until: asyncio.Event | None = None,
    ) -> None:
        """Send each row of ``indices`` once; with ``until``, keep cycling
        through them until that event is set (and at least once through)."""
        gate = asyncio.Semaphore(concurrency)
        rounds = 0

        async def one(i: int) -> None:
            async with gate:
                await ledger.call(
                    client,
                    self.model,
                    {"input": self.x[i : i + 1]},
                    timeout=timeout,
                    expect=self.expect(i),
                )
                if pace:
                    await asyncio.sleep(pace)

        while rounds == 0 or (until is not None and not until.is_set()):
            rounds += 1
            await asyncio.gather(*(one(i) for i in indices))


async def under_fault(
    ledger: Ledger,
    load: Callable[[asyncio.Event], Awaitable[None]],
    fault: Callable[[], Awaitable[None]],
    *,
    start_after: float = 0.5,
    tail: float = 1.0,
) -> None:
    """Run ``load`` from before ``fault`` starts (``start_after`` seconds in)
    until ``tail`` seconds after it ended, marking the fault's window in the
    ledger. ``load`` gets the event that tells it to stop."""
    stop = asyncio.Event()

    async def inject() -> None:
        await asyncio.sleep(start_after)
        ledger.fault_started()
        try:
            await fault()
        finally:
            ledger.fault_ended()
            await asyncio.sleep(tail)
            stop.set()

    await asyncio.gather(load(stop), inject())


async def serves_again(
    ledger: Ledger, client: Client, load: Load, indices: range, *, within: float = 45.0
) -> None:
    """The fleet recovered: one request succeeds within ``within`` seconds
    (retrying), then every request of ``indices`` is answered correctly."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    first = indices[0]
    probe = Ledger(grace=float("inf"))
    while True:
        entry = await probe.call(
            client,
            load.model,
            {"input": load.x[first : first + 1]},
            timeout=5,
            expect=load.expect(first),
        )
        if entry.outcome == "ok":
            break
        assert entry.outcome not in ("crossed", "hung"), probe.summary()
        assert loop.time() < end, (
            f"the fleet did not serve again within {within}s: {probe.summary()}"
        )
        await asyncio.sleep(0.5)
    clean = Ledger(grace=0.0)
    await load.run(clean, client, indices[1:], timeout=15)
    counts = clean.counts()
    assert counts == {"ok": len(indices) - 1}, f"after recovery: {clean.summary()}"
    ledger.entries.extend(probe.entries + clean.entries)


def assert_clean(ledger: Ledger, allowed: tuple[str, ...] = ()) -> None:
    """No request lost, crossed, hung or answered wrongly; only ``ok`` and the
    ``allowed`` typed errors."""
    counts = ledger.counts()
    assert not ledger.bad(), ledger.summary()
    assert set(counts) <= {"ok", *allowed}, ledger.summary(allowed)


def assert_felt(ledger: Ledger, slow: float = 1.0) -> None:
    """The fault took effect: some request overlapping it failed or took
    longer than ``slow`` seconds (the fault-free path answers in milliseconds)."""
    hit = [
        e
        for e in ledger.entries
        for a, b in ledger.faults
        if e.sent <= b and e.ended >= a and (e.outcome != "ok" or e.ended - e.sent > slow)
    ]
    assert hit, f"no request felt the fault: {ledger.summary()}"


__all__ = [
    "Load",
    "assert_clean",
    "assert_felt",
    "kafka_pid",
    "proxied",
    "rabbitmqctl",
    "serves_again",
    "under_fault",
    "with_query",
]
