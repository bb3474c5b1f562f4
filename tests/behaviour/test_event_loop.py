"""The worker and the client on uvloop (``fleet worker --event-loop uvloop``)
answer as they do on asyncio; the worker says which loop and interpreter run it."""

from __future__ import annotations

import asyncio
import platform
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fleet import eventloop, interpreter
from producer import Client
from tests.helpers import WorkerProcess, direct_onnx, rows, running_worker


async def _ask(client: Client, model: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    replies = await asyncio.gather(*(client.infer(model, {"input": row[None]}) for row in x))
    return np.concatenate([r["label"] for r in replies])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_worker_on_each_loop_answers(
    broker_kind: str, broker_url: str, model_repo: Path, unique_model: str, loop: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 40, seed=11)
    want = direct_onnx(model_repo / digits, {"input": x})["label"]
    if broker_kind == "memory":  # one process: worker and client on a loop of that kind

        async def serve_and_ask() -> tuple[str, npt.NDArray[np.int64]]:
            async with running_worker(broker_url, model_repo), Client(broker_url) as client:
                return eventloop.running_loop_kind(), await _ask(client, digits, x)

        kind, labels = await asyncio.to_thread(eventloop.run, serve_and_ask(), loop)
        assert kind == loop
        np.testing.assert_array_equal(labels, want)
        return
    worker = await WorkerProcess(broker_url, model_repo, "looped", "--event-loop", loop).start()
    try:
        (ready,) = [line for line in worker.lines if line.get("event") == "worker ready"]
        assert ready["event_loop"] == loop
        # the worker runs on this test's interpreter: it says what this process would
        said = interpreter.summary()
        assert {key: ready[key] for key in said} == said
        assert said["python"] == platform.python_version()
        async with Client(broker_url) as client:
            np.testing.assert_array_equal(await _ask(client, digits, x), want)
    finally:
        await worker.stop()
