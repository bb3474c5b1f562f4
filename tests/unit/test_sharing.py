"""The lock that lets the broker tiers run side by side (tests/sharing.py)."""

from __future__ import annotations

import fcntl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.sharing import holding, lock_mode, shared_resources

pytestmark = pytest.mark.unit


@dataclass
class CallSpec:
    params: dict[str, Any]


@dataclass
class FakeItem:
    markers: tuple[str, ...] = ()
    fixturenames: tuple[str, ...] = ()
    callspec: CallSpec | None = None

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


@pytest.mark.parametrize(
    ("item", "mode"),
    [
        pytest.param(FakeItem(markers=("unit",)), None, id="unit"),
        pytest.param(FakeItem(markers=("rabbitmq",)), fcntl.LOCK_SH, id="rabbitmq"),
        pytest.param(FakeItem(markers=("jobs",)), fcntl.LOCK_SH, id="jobs"),
        pytest.param(FakeItem(markers=("kafka", "exclusive")), fcntl.LOCK_EX, id="marked"),
        pytest.param(
            FakeItem(
                markers=("kafka",),
                fixturenames=("restart_broker",),
                callspec=CallSpec({"broker_kind": "kafka"}),
            ),
            fcntl.LOCK_EX,
            id="restarts-kafka",
        ),
        pytest.param(
            FakeItem(
                markers=("memory", "faults"),
                fixturenames=("restart_broker",),
                callspec=CallSpec({"broker_kind": "memory"}),
            ),
            fcntl.LOCK_SH,
            id="restarts-the-embedded-broker",
        ),
        pytest.param(FakeItem(fixturenames=("paused_kafka",)), fcntl.LOCK_EX, id="pauses"),
    ],
)
def test_lock_mode(item: FakeItem, mode: int | None) -> None:
    assert lock_mode(item) == mode  # type: ignore[arg-type]


def _take(
    directory: Path, mode: int, name: str, order: list[str], release: threading.Event
) -> None:
    with holding(directory, mode):
        order.append(name)
        release.wait(10)


def _turnstile_taken(directory: Path) -> bool:
    with (directory / "turnstile").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_an_exclusive_taker_waits_for_the_shared_and_goes_before_later_ones(
    tmp_path: Path,
) -> None:
    order: list[str] = []
    done = {name: threading.Event() for name in ("reader", "writer", "late reader")}
    reader = threading.Thread(
        target=_take, args=(tmp_path, fcntl.LOCK_SH, "reader", order, done["reader"])
    )
    reader.start()
    while order != ["reader"]:
        time.sleep(0.01)
    writer = threading.Thread(
        target=_take, args=(tmp_path, fcntl.LOCK_EX, "writer", order, done["writer"])
    )
    writer.start()
    while not _turnstile_taken(tmp_path):  # the writer waits, holding the turnstile
        time.sleep(0.01)
    assert order == ["reader"]
    late = threading.Thread(
        target=_take, args=(tmp_path, fcntl.LOCK_SH, "late reader", order, done["late reader"])
    )
    late.start()
    time.sleep(0.2)  # a reader-preferring lock would let it in beside the first
    assert order == ["reader"]
    done["reader"].set()
    while order != ["reader", "writer"]:
        time.sleep(0.01)
    done["writer"].set()
    done["late reader"].set()
    for thread in (reader, writer, late):
        thread.join(10)
    assert order == ["reader", "writer", "late reader"]


def test_shared_takers_hold_the_lock_together(tmp_path: Path) -> None:
    order: list[str] = []
    release = threading.Event()
    threads = [
        threading.Thread(target=_take, args=(tmp_path, fcntl.LOCK_SH, n, order, release))
        for n in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    while len(order) < 2:  # both inside at once, or this never ends (the test times out)
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(order) == ["a", "b"]


def test_shared_resources_are_taken_in_one_order() -> None:
    class Marked:
        def iter_markers(self, name: str) -> list[pytest.Mark]:
            assert name == "shares"
            return [pytest.mark.shares("b", "a").mark, pytest.mark.shares("a").mark]

    assert shared_resources(Marked()) == ["a", "b"]  # type: ignore[arg-type]
