"""The ``local`` actuator: real ``fleet worker`` processes on a real broker.

Pending until a worker's ``ready`` heartbeat, in service after; an unexpected
death is noticed and replaced; scale-in is SIGTERM (exit 0 after draining);
a worker that ignores SIGTERM is killed after the grace period.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from autoscaler.actuators.local import LocalActuator
from autoscaler.signals import Signals
from fleet.transport import Transport, connect
from fleet.worker_command import worker_command
from tests.conftest import broker_url_for

HEARTBEAT_S = 0.5


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def real_broker(request: pytest.FixtureRequest) -> str:
    """A broker other processes can reach (memory:// lives in one process)."""
    return broker_url_for(str(request.param))


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def watcher(real_broker: str) -> AsyncIterator[Transport]:
    t = connect(real_broker)
    await t.connect()
    yield t
    await t.close()


def _actuator(broker: str, models: Path, tmp_path: Path, **kw: object) -> LocalActuator:
    return LocalActuator(
        broker=broker,
        models_dir=models,
        command=worker_command(),
        extra_args=["--heartbeat-interval", str(HEARTBEAT_S)],
        log_dir=tmp_path / "workers",
        **kw,  # type: ignore[arg-type]
    )


async def test_pending_until_ready_then_sigterm_drains(
    real_broker: str, watcher: Transport, model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    act = _actuator(real_broker, model_repo, tmp_path, max_workers=2, grace_period_s=20)
    signals = Signals(watcher, [f"{unique_model}-digits"])
    signals.add_listener(act.observe_heartbeat)
    await signals.start()
    try:
        assert await act.set_desired(5, ("test",)) == 2  # clamped to max_workers
        cap = await act.capacity()
        assert (cap.in_service, cap.pending, cap.desired) == (0, 2, 2)

        async def in_service() -> int:
            return (await act.capacity()).in_service

        end = time.monotonic() + 45
        while await in_service() < 2:
            assert time.monotonic() < end, f"workers never became ready: {act.status()}"
            await asyncio.sleep(0.1)
        assert (await act.capacity()) == (2, 0, 2, None)

        # scale in: the newest one gets SIGTERM, drains and exits 0
        newest = act.workers[-1].worker_id
        assert await act.set_desired(1) == 1
        assert (await act.capacity()) == (1, 0, 1, None)
        await asyncio.wait_for(act.wait_stopped(), 25)
        assert act.stopped_by_sigterm == [(newest, 0)]
        assert act.killed == 0 and act.unexpected_exits == 0
    finally:
        await act.close()
        await signals.close()
    assert all(rc == 0 for _, rc in act.stopped_by_sigterm)
    assert len(act.stopped_by_sigterm) == 2


async def test_unexpected_death_is_noticed_and_replaced(
    real_broker: str, watcher: Transport, model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    act = _actuator(real_broker, model_repo, tmp_path, restart_backoff_s=0.2)
    signals = Signals(watcher, [f"{unique_model}-digits"])
    signals.add_listener(act.observe_heartbeat)
    await signals.start()
    try:
        await act.set_desired(1)
        end = time.monotonic() + 45
        while (await act.capacity()).in_service < 1:
            assert time.monotonic() < end, act.status()
            await asyncio.sleep(0.1)
        victim = act.workers[0]
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        cap = await act.capacity()  # noticed: out of service, a replacement booting
        assert act.unexpected_exits == 1
        assert cap.in_service == 0
        await asyncio.sleep(0.25)  # the restart backoff
        await act.capacity()  # each poll reconciles: the replacement starts
        assert len(act.workers) == 1
        assert act.workers[0].worker_id != victim.worker_id
        while (await act.capacity()).in_service < 1:
            assert time.monotonic() < end, act.status()
            await asyncio.sleep(0.1)
    finally:
        await act.close()
        await signals.close()


_IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.unit
async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    act = LocalActuator(
        broker="memory://unused",
        models_dir=tmp_path,
        command=[sys.executable, "-c", _IGNORES_SIGTERM],
        grace_period_s=0.5,
        log_dir=tmp_path / "logs",
    )
    await act.set_desired(1)
    log = tmp_path / "logs" / f"{act.workers[0].worker_id}.log"
    await until(lambda: log.exists() and "up" in log.read_text(), 10, "the process to start")
    began = time.monotonic()
    await act.set_desired(0)
    await asyncio.wait_for(act.wait_stopped(), 10)
    assert time.monotonic() - began >= 0.5
    assert act.killed == 1 and act.stopped_by_sigterm == []
    await act.close()


@pytest.mark.unit
async def test_a_command_that_keeps_dying_backs_off(tmp_path: Path) -> None:
    act = LocalActuator(
        broker="memory://unused",
        models_dir=tmp_path,
        command=[sys.executable, "-c", "raise SystemExit(3)"],
        restart_backoff_s=0.3,
        log_dir=tmp_path / "logs",
    )
    await act.set_desired(1)
    first = act.workers[0]
    await first.proc.wait()
    assert (await act.capacity()) == (0, 0, 1, None)
    assert act.unexpected_exits == 1
    assert act.workers == []  # within the backoff: not yet replaced
    await asyncio.sleep(0.35)
    await act.capacity()
    assert len(act.workers) == 1  # replaced after the backoff
    await act.close()


@pytest.mark.unit
async def test_a_worker_stopped_the_moment_it_starts_exits_0(tmp_path: Path) -> None:
    """SIGTERM right after the spawn reaches the worker while its interpreter
    still starts, before any handler of its own could be set: it waits
    (inherited blocked) for ``python -m fleetctl``'s handler, which exits 0."""
    act = LocalActuator(
        broker="memory://unused", models_dir=tmp_path, command=worker_command(), grace_period_s=30
    )
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    await act.set_desired(1)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # ours unblocked again
    (worker,) = act.workers
    await act.set_desired(0)
    await asyncio.wait_for(act.wait_stopped(), 20)
    assert act.stopped_by_sigterm == [(worker.worker_id, 0)]
    assert act.killed == 0
    await act.close()


@pytest.mark.unit
async def test_another_command_starts_with_sigterm_not_blocked(tmp_path: Path) -> None:
    """Only ``python -m fleetctl`` unblocks SIGTERM: any other command starts
    with it as usual."""
    act = LocalActuator(
        broker="memory://unused",
        models_dir=tmp_path,
        command=[
            sys.executable,
            "-c",
            "import signal; print(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))",
        ],
        log_dir=tmp_path / "logs",
    )
    await act.set_desired(1)
    (worker,) = act.workers
    await worker.proc.wait()
    assert (tmp_path / "logs" / f"{worker.worker_id}.log").read_text().strip() == "False"
    await act.close()
