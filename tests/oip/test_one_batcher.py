"""OIP HTTP and the broker feed one batcher: shared batches, synchronous first,
admission, deadlines and callers that go away (a gated model holds work back)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from fleet.transport.base import wait_until
from tests.helpers import running_worker
from tests.oip.conftest import gated_runtime
from worker.service import Worker

pytestmark = pytest.mark.memory


def _x(value: float, n: int = 1) -> npt.NDArray[np.float32]:
    return np.full((n, 2), value, dtype=np.float32)


async def _http(
    client: httpclient.InferenceServerClient, model: str, x: npt.NDArray[Any], **kw: Any
) -> npt.NDArray[Any]:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = await client.infer(model, [tensor], **kw)
    return result.as_numpy("y")


async def _blocked(worker: Worker, client: httpclient.InferenceServerClient, model: str) -> Any:
    """A full batch (4 rows) over HTTP, running and held at the gate."""
    blocker = asyncio.ensure_future(_http(client, model, _x(9.0, 4)))
    assert await asyncio.to_thread(gated_runtime().started.wait, 30)
    return blocker


async def test_a_full_worker_answers_503_at_once(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_port=0, max_sync_requests=2) as worker:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            waiting = asyncio.ensure_future(_http(http, model, _x(1.0)))
            assert await wait_until(lambda: worker.in_flight() == 2, 10)
            with pytest.raises(InferenceServerException) as info:
                await _http(http, model, _x(1.0))
            assert info.value.status() == "503"
            runtime.gate.set()
            await blocker
            np.testing.assert_array_equal(await waiting, _x(2.0))
            np.testing.assert_array_equal(await _http(http, model, _x(1.0)), _x(2.0))
        finally:
            runtime.gate.set()
            await http.close()


async def test_the_timeout_parameter_is_the_deadline(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_port=0) as worker:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            with pytest.raises(InferenceServerException) as info:
                await _http(http, model, _x(1.0), timeout=50_000)  # microseconds
            assert info.value.status() == "504"
            runtime.gate.set()
            await blocker
            assert await wait_until(lambda: worker.in_flight() == 0, 10)
        finally:
            runtime.gate.set()
            await http.close()
    assert [len(b) for b in runtime.batches] == [4]  # the late request never ran


async def test_a_caller_that_goes_away_cancels_its_request(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 1]}]}
    )
    async with running_worker(broker, gated_repo(1), oip_port=0) as worker:
        assert worker.oip is not None
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            url = f"http://127.0.0.1:{worker.oip_port}/v2/models/{model}/infer"
            async with aiohttp.ClientSession() as session:
                call = asyncio.ensure_future(session.post(url, data=body))
                assert await wait_until(lambda: worker.in_flight() == 2, 10)
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
            sync = worker.sync
            assert sync is not None
            assert await wait_until(lambda: sync.waiting() == 1, 10)  # the blocker only
            runtime.gate.set()
            await blocker
            assert await wait_until(lambda: worker.in_flight() == 0, 10)
        finally:
            runtime.gate.set()
            await http.close()
    assert [len(b) for b in runtime.batches] == [4]  # the abandoned request never ran


async def test_a_draining_worker_answers_what_it_took_and_refuses_more(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_port=0) as worker:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            taken = asyncio.ensure_future(_http(http, model, _x(1.0)))
            assert await wait_until(lambda: worker.in_flight() == 2, 10)
            stopping = asyncio.ensure_future(worker.stop())
            assert await wait_until(lambda: worker.state == "draining", 10)
            with pytest.raises(InferenceServerException) as info:
                await _http(http, model, _x(1.0))
            assert info.value.status() == "503"
            assert not await http.is_server_ready()
            runtime.gate.set()
            np.testing.assert_array_equal(await blocker, _x(18.0, 4))
            np.testing.assert_array_equal(await taken, _x(2.0))
            await stopping
        finally:
            runtime.gate.set()
            await http.close()


async def test_an_aborted_worker_answers_its_waiting_calls_503(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_port=0) as worker:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        runtime = gated_runtime()
        try:
            blocker = await _blocked(worker, http, model)
            waiting = asyncio.ensure_future(_http(http, model, _x(1.0)))
            assert await wait_until(lambda: worker.in_flight() == 2, 10)
            await worker.abort()
            for call in (blocker, waiting):
                with pytest.raises(InferenceServerException) as info:
                    await call
                assert info.value.status() == "503"
        finally:
            runtime.gate.set()
            await http.close()
