"""The event loop a fleet process runs on (fleet/eventloop.py)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from pydantic import ValidationError

from fleet import eventloop
from fleet.errors import ConfigError
from worker.settings import WorkerSettings

pytestmark = pytest.mark.unit


async def _kind() -> str:
    await asyncio.sleep(0)
    return eventloop.running_loop_kind()


def test_asyncio_is_the_default() -> None:
    assert eventloop.run(_kind()) == "asyncio"
    assert eventloop.run(_kind(), "asyncio") == "asyncio"


def test_uvloop_runs_the_coroutine_on_uvloop() -> None:
    assert eventloop.run(_kind(), "uvloop") == "uvloop"


def test_an_unknown_loop_is_a_config_error_and_the_coroutine_is_closed() -> None:
    coro = _kind()
    with pytest.raises(ConfigError, match="'trio' is not one of asyncio, uvloop"):
        eventloop.run(coro, "trio")
    assert coro.cr_frame is None  # closed: no "never awaited" warning later


def test_uvloop_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'inference-fleet\[uvloop\]'"):
        eventloop.run(_kind(), "uvloop")
    with pytest.raises(ValidationError, match="inference-fleet"):
        WorkerSettings(models="m", event_loop="uvloop")


def test_worker_settings_take_the_loop_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings(models="m").event_loop == "asyncio"
    monkeypatch.setenv("FLEET_EVENT_LOOP", "uvloop")
    assert WorkerSettings(models="m").event_loop == "uvloop"
    with pytest.raises(ValidationError, match="event_loop"):
        WorkerSettings(models="m", event_loop="trio")


async def _swallows_one_cancellation(stop: asyncio.Event) -> None:
    """A loop whose first cancellation is lost, as ``asyncio.wait_for`` in
    Python 3.11 can lose one, then waits for work that never comes."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass  # lost
    await stop.wait()


async def test_cancel_and_wait_ends_a_task_that_swallowed_a_cancellation() -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(_swallows_one_cancellation(stop))
    await asyncio.sleep(0)
    # the usual cancel-then-gather waits on it for ever
    task.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(asyncio.gather(task)), 0.2)
    assert not task.done()
    await asyncio.wait_for(eventloop.cancel_and_wait(task, every=0.05), 5)
    assert task.cancelled()


async def test_cancel_and_wait_retrieves_what_tasks_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    slow = asyncio.ensure_future(asyncio.sleep(3600))
    await eventloop.cancel_and_wait(failed, slow)
    assert failed.done() and slow.cancelled()


async def _task_of(value: int) -> tuple[int, asyncio.Task[object] | None]:
    await asyncio.sleep(0)
    if value < 0:
        raise ValueError(value)
    return value, asyncio.current_task()


async def test_together_awaits_a_lone_awaitable_in_the_callers_task() -> None:
    (got,) = await eventloop.together([_task_of(1)])
    assert got == (1, asyncio.current_task())
    assert await eventloop.together([]) == []


async def test_together_runs_several_as_gather_does_in_order() -> None:
    got = await eventloop.together(_task_of(i) for i in (3, 1, 2))
    assert [value for value, _ in got] == [3, 1, 2]
    assert all(task is not asyncio.current_task() for _, task in got)
    with pytest.raises(ValueError, match="-1"):
        await eventloop.together([_task_of(1), _task_of(-1)])
    with pytest.raises(ValueError, match="-2"):
        await eventloop.together([_task_of(-2)])
