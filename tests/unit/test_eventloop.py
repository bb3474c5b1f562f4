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


class _Log:
    """What handlers did, in order, and the task each step ran in."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, asyncio.Task[object] | None]] = []

    def note(self, what: str) -> None:
        self.steps.append((what, asyncio.current_task()))

    @property
    def what(self) -> list[str]:
        return [w for w, _ in self.steps]


async def _handler(log: _Log, name: str, wait: asyncio.Future[None] | None = None) -> None:
    log.note(f"{name} began")
    try:
        if wait is not None:
            await wait
        log.note(f"{name} ended")
    finally:
        log.note(f"{name} finally")


async def test_handlers_run_in_the_next_turn_in_order_without_a_task() -> None:
    log, handlers = _Log(), eventloop.Handlers()
    handlers.start(_handler(log, "a"))
    handlers.start(_handler(log, "b"))
    assert log.steps == []  # not in the turn they arrived in
    await asyncio.sleep(0)
    assert log.what == ["a began", "a ended", "a finally", "b began", "b ended", "b finally"]
    assert {task for _, task in log.steps} == {None} and not handlers.tasks


async def test_a_handler_that_waits_goes_on_in_a_task() -> None:
    log, handlers = _Log(), eventloop.Handlers()
    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handlers.start(_handler(log, "a", wait))
    handlers.start(_handler(log, "b"))
    await asyncio.sleep(0)
    assert log.what == ["a began", "b began", "b ended", "b finally"]
    (task,) = handlers.tasks
    wait.set_result(None)
    await asyncio.wait_for(task, 5)
    assert log.what[4:] == ["a ended", "a finally"]
    assert log.steps[0][1] is None and log.steps[4][1] is task
    assert not handlers.tasks  # let go once done


async def test_what_a_waiting_handler_raises_ends_its_task_with_it() -> None:
    async def fails(wait: asyncio.Future[None]) -> None:
        await wait
        raise ValueError("late")

    handlers = eventloop.Handlers()
    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handlers.start(fails(wait))
    await asyncio.sleep(0)
    (task,) = handlers.tasks
    wait.set_result(None)
    with pytest.raises(ValueError, match="late"):
        await asyncio.wait_for(task, 5)


async def test_cancel_drops_handlers_not_started_and_cancels_those_under_way() -> None:
    log, handlers = _Log(), eventloop.Handlers()
    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handlers.start(_handler(log, "a", wait))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # a's task has had its first step: it waits on wait
    handlers.start(_handler(log, "b"))  # due in the next turn: never runs
    tasks = handlers.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert log.what == ["a began", "a finally"]  # the cancellation reached the handler
    assert wait.cancelled() and all(t.cancelled() for t in tasks) and not handlers.tasks


async def test_a_task_cancelled_before_its_first_step_ends_its_handler() -> None:
    log, handlers = _Log(), eventloop.Handlers()
    wait: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handlers.start(_handler(log, "a", wait))
    await asyncio.sleep(0)  # a waits on wait; its task has not had a step yet
    (task,) = handlers.tasks
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and log.what == ["a began", "a finally"]


async def test_a_handler_that_waits_on_nothing_goes_on_in_the_next_turn() -> None:
    async def yields(log: _Log) -> None:
        log.note("began")
        await asyncio.sleep(0)
        log.note("ended")

    log, handlers = _Log(), eventloop.Handlers()
    handlers.start(yields(log))
    await asyncio.sleep(0)
    (task,) = handlers.tasks
    await asyncio.wait_for(task, 5)
    assert log.what == ["began", "ended"] and log.steps[1][1] is task


async def test_run_due_runs_the_handlers_now_and_once() -> None:
    log, handlers = _Log(), eventloop.Handlers()
    handlers.start(_handler(log, "a"))
    handlers.run_due()
    assert log.what == ["a began", "a ended", "a finally"]
    await asyncio.sleep(0)  # the turn they were due in: nothing left to run
    assert len(log.steps) == 3
