"""Queue traffic (memory:// or RabbitMQ) and OIP HTTP traffic on one worker share batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.http.aio as httpclient

from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import direct_onnx, rows, running_worker
from tests.oip.conftest import gated_runtime
from tests.oip.test_one_batcher import _blocked, _http, _x

# the tier of each test is its broker's: see the queue_broker fixture


async def test_synchronous_and_queued_requests_share_batches_synchronous_first(
    queue_broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    broker = queue_broker
    model = f"{unique_model}-gated"
    # batches flush only when full: what each holds does not depend on timing
    async with (
        running_worker(broker, gated_repo(60_000), oip_port=0) as worker,
        Client(broker) as queue,
    ):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            first = [asyncio.ensure_future(queue.infer(model, {"x": _x(1.0)})) for _ in range(4)]
            assert await wait_until(lambda: worker.in_flight() == 5, 10)
            later = [asyncio.ensure_future(queue.infer(model, {"x": _x(3.0)})) for _ in range(2)]
            assert await wait_until(lambda: worker.in_flight() == 7, 10)
            sync = [asyncio.ensure_future(_http(http, model, _x(2.0))) for _ in range(2)]
            assert await wait_until(lambda: worker.in_flight() == 9, 10)
            runtime.gate.set()
            np.testing.assert_array_equal(await blocker, _x(18.0, 4))
            for f in sync:
                np.testing.assert_array_equal(await f, _x(4.0))
            for f, value in [*((f, 2.0) for f in first), *((f, 6.0) for f in later)]:
                np.testing.assert_array_equal((await f)["y"], _x(value))
        finally:
            runtime.gate.set()
            await http.close()
    firsts = [b[:, 0].tolist() for b in runtime.batches]
    # the batch taken when the blocker's slot frees holds the synchronous requests
    # first, then the queued ones in their order; the next, the rest of the queue
    assert firsts == [[9.0] * 4, [2.0, 2.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0]]


async def test_queue_and_http_traffic_together_equal_onnx_runtime(
    queue_broker: str, model_repo: Path, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    xs = [rows(256, 1 + i % 3, seed=i) for i in range(40)]
    async with (
        running_worker(queue_broker, model_repo, oip_port=0) as worker,
        Client(queue_broker) as queue,
    ):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        try:

            async def one(i: int, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
                if i % 2:
                    return (await queue.infer(mlp, {"input": x}))["logits"]
                tensor = httpclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                return (await http.infer(mlp, [tensor])).as_numpy("logits")

            got = await asyncio.gather(*(one(i, x) for i, x in enumerate(xs)))
        finally:
            await http.close()
    for x, logits in zip(xs, got, strict=True):
        want = direct_onnx(model_repo / mlp, {"input": x})["logits"]
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
