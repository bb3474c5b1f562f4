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
