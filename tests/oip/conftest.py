"""Fixtures of the Open Inference Protocol tests: a worker serving OIP over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleet.transport.memory import MemoryBroker
from tests.conftest import BROKERS, broker_url_for
from tests.helpers import running_worker
from tests.oip.gated import GATED, GatedRuntime, loaded
from tests.worker.fakes import doubling_repo
from worker.runtime import RUNTIMES
from worker.service import Worker


@pytest.fixture
def broker(unique_model: str) -> Iterator[str]:
    yield f"memory://{unique_model}"
    MemoryBroker.reset(unique_model)


@pytest.fixture(
    params=[pytest.param(kind, marks=BROKERS[kind].mark, id=kind) for kind in ("memory", "amqp")]
)
def queue_broker(request: pytest.FixtureRequest, unique_model: str) -> Iterator[str]:
    """The broker the queue traffic of a mixed test goes through: memory:// or RabbitMQ."""
    if request.param == "memory":
        yield f"memory://{unique_model}"
        MemoryBroker.reset(unique_model)
    else:
        yield broker_url_for(request.param)


@pytest.fixture
async def oip_worker(broker: str, model_repo: Path) -> AsyncIterator[Worker]:
    """A worker serving the demo models over the broker and over OIP HTTP."""
    async with running_worker(broker, model_repo, oip_port=0) as worker:
        yield worker


@pytest.fixture
def gated_repo(tmp_path: Path, unique_model: str) -> Iterator[Callable[[float], Path]]:
    """Makes a repository serving ``<unique_model>-gated``: batches of 4 rows,
    flushed when full or after the given ``max_wait_ms``; its runs wait at a
    gate, so they always run in the model's thread, never on the event loop."""
    loaded.clear()

    def make(max_wait_ms: float) -> Path:
        config = (
            f'runtime = "gated"\nmax_batch_size = 4\nmax_wait_ms = {max_wait_ms}\n'
            "inline_below_ms = 0\n"
        )
        return doubling_repo(tmp_path / "models", f"{unique_model}-gated", config)

    with RUNTIMES.registered(GATED):
        yield make


def gated_runtime() -> GatedRuntime:
    assert len(loaded) == 1
    return loaded[0]
