"""Triton's own gRPC clients, unmodified, against a worker's OIP gRPC service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as blocking
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from fleet.transport.base import wait_until
from tests.helpers import direct_onnx, rows, running_worker
from tests.oip.conftest import gated_runtime
from worker.oip_proto import oip_v2_pb2 as pb
from worker.service import Worker

pytestmark = pytest.mark.memory


@pytest.fixture
async def grpc_worker(broker: str, model_repo: Path) -> AsyncIterator[Worker]:
    """A worker serving the demo models over the broker, OIP HTTP and OIP gRPC."""
    async with running_worker(broker, model_repo, oip_port=0, oip_grpc_port=0) as worker:
        yield worker


@pytest.fixture
async def triton(grpc_worker: Worker) -> AsyncIterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_worker.oip_grpc_port}")
    yield client
    await client.close()


def _input(name: str, array: npt.NDArray[Any], datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


async def test_health_and_metadata(
    triton: grpcclient.InferenceServerClient, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    assert await triton.is_server_live()
    assert await triton.is_server_ready()
    meta = await triton.get_server_metadata()
    assert meta.name == "fleet" and "binary_tensor_data" in meta.extensions
    assert await triton.is_model_ready(mlp)
    assert await triton.is_model_ready(mlp, "1")
    assert not await triton.is_model_ready(mlp, "7")
    assert not await triton.is_model_ready("absent")
    for version in ("", "1"):
        model = await triton.get_model_metadata(mlp, version)
        assert model.name == mlp and list(model.versions) == ["1"]
        assert model.platform == "onnxruntime_onnx"
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
            ("input", "FP32", [-1, 256])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
            ("logits", "FP32", [-1, 10])
        ]
    with pytest.raises(InferenceServerException) as info:
        await triton.get_model_metadata("absent")
    assert info.value.status() == "StatusCode.NOT_FOUND"


async def test_outputs_equal_onnx_runtime(
    triton: grpcclient.InferenceServerClient, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 5, seed=3)
    want = direct_onnx(model_repo / digits, {"input": x})
    outputs = [
        grpcclient.InferRequestedOutput("probabilities"),
        grpcclient.InferRequestedOutput("label"),
    ]
    result = await triton.infer(digits, [_input("input", x)], outputs=outputs, request_id="r-1")
    response = result.get_response()
    assert response.id == "r-1" and response.model_name == digits
    assert response.model_version == "1"
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    # a batch's float sums may run in another order than a lone run's: close, not equal
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6
    )


async def test_requested_outputs_and_defaults(
    triton: grpcclient.InferenceServerClient, model_repo: Path, unique_model: str
) -> None:
    digits, mlp = f"{unique_model}-digits", f"{unique_model}-mlp"
    only = await triton.infer(
        digits,
        [_input("input", rows(64, 2, seed=4))],
        outputs=[grpcclient.InferRequestedOutput("label")],
    )
    assert [o.name for o in only.get_response().outputs] == ["label"]
    x = rows(256, 3, seed=5)
    every = await triton.infer(mlp, [_input("input", x)], model_version="1")
    assert [o.name for o in every.get_response().outputs] == ["logits"]
    want = direct_onnx(model_repo / mlp, {"input": x})
    np.testing.assert_allclose(every.as_numpy("logits"), want["logits"], rtol=1e-4, atol=1e-5)


async def test_typed_contents_as_well_as_raw(
    grpc_worker: Worker, model_repo: Path, unique_model: str
) -> None:
    """A request whose tensors are in ``contents`` (not raw), from a plain
    gRPC stub built on the protocol's messages."""
    mlp = f"{unique_model}-mlp"
    x = rows(256, 2, seed=6)
    request = pb.ModelInferRequest(model_name=mlp, id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 256])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_worker.oip_grpc_port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = await call(request)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["logits"]
    assert list(response.outputs[0].shape) == [2, 10]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    want = direct_onnx(model_repo / mlp, {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


async def test_errors_have_the_status_clients_expect(
    triton: grpcclient.InferenceServerClient, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    good = _input("input", rows(256, 1))
    cases: list[tuple[str, str, list[grpcclient.InferInput], str]] = [
        ("absent", "", [good], "NOT_FOUND"),
        (mlp, "9", [good], "NOT_FOUND"),
        (mlp, "", [_input("input", rows(255, 1))], "INVALID_ARGUMENT"),  # wrong shape
        (mlp, "", [_input("other", rows(256, 1))], "INVALID_ARGUMENT"),  # unknown input
        (mlp, "", [_input("input", rows(256, 1).astype(np.float64), "FP64")], "INVALID_ARGUMENT"),
    ]
    for model, version, inputs, status in cases:
        with pytest.raises(InferenceServerException) as info:
            await triton.infer(model, inputs, model_version=version)
        assert info.value.status() == f"StatusCode.{status}", (model, version)
        assert info.value.message()
    with pytest.raises(InferenceServerException) as info:
        await triton.infer(mlp, [good], outputs=[grpcclient.InferRequestedOutput("nope")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "nope" in str(info.value.message())
    ok = await triton.infer(mlp, [good])  # and the worker carries on
    assert ok.as_numpy("logits").shape == (1, 10)


async def test_an_oversize_message_is_refused(
    broker: str, model_repo: Path, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    async with running_worker(
        broker, model_repo, oip_grpc_port=0, max_message_bytes=4096
    ) as worker:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{worker.oip_grpc_port}")
        try:
            with pytest.raises(InferenceServerException) as info:
                await client.infer(mlp, [_input("input", rows(256, 8))])
            assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            ok = await client.infer(mlp, [_input("input", rows(256, 1))])
            assert ok.as_numpy("logits").shape == (1, 10)
        finally:
            await client.close()


async def test_the_blocking_client_too(
    grpc_worker: Worker, model_repo: Path, unique_model: str
) -> None:
    """tritonclient.grpc's blocking client, from a thread."""
    mlp = f"{unique_model}-mlp"
    x = rows(256, 4, seed=9)

    def call() -> npt.NDArray[Any]:
        client = blocking.InferenceServerClient(f"127.0.0.1:{grpc_worker.oip_grpc_port}")
        try:
            assert client.is_server_ready() and client.is_model_ready(mlp)
            tensor = blocking.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            wanted = [blocking.InferRequestedOutput("logits")]
            return client.infer(mlp, [tensor], outputs=wanted).as_numpy("logits")
        finally:
            client.close()

    got = await asyncio.to_thread(call)
    want = direct_onnx(model_repo / mlp, {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- admission, deadlines


def _x(value: float, n: int = 1) -> npt.NDArray[np.float32]:
    return np.full((n, 2), value, dtype=np.float32)


async def _call(
    client: grpcclient.InferenceServerClient, model: str, x: npt.NDArray[Any], **kw: Any
) -> npt.NDArray[Any]:
    result = await client.infer(model, [_input("x", x)], **kw)
    return result.as_numpy("y")


async def test_admission_is_shared_with_http_and_a_full_worker_refuses_at_once(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    """Two calls in flight over HTTP and gRPC fill ``max_sync_requests=2``:
    the next gRPC call gets RESOURCE_EXHAUSTED at once."""
    import tritonclient.http.aio as httpclient

    model = f"{unique_model}-gated"
    repo = gated_repo(1)
    async with running_worker(
        broker, repo, oip_port=0, oip_grpc_port=0, max_sync_requests=2
    ) as worker:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{worker.oip_grpc_port}")
        runtime = gated_runtime()
        try:
            blocker = asyncio.ensure_future(_call(client, model, _x(9.0, 4)))
            assert await asyncio.to_thread(runtime.started.wait, 30)
            tensor = httpclient.InferInput("x", [1, 2], "FP32")
            tensor.set_data_from_numpy(_x(1.0))
            waiting = asyncio.ensure_future(http.infer(model, [tensor]))
            assert await wait_until(lambda: worker.in_flight() == 2, 10)
            with pytest.raises(InferenceServerException) as info:
                await _call(client, model, _x(1.0))
            assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            beat = worker.heartbeat()  # what the autoscaler hears of it
            assert (beat.sync_arrived_total, beat.sync_rejected_total) == (3, 1)
            assert beat.sync_in_flight == 2 and beat.in_flight == 2
            runtime.gate.set()
            np.testing.assert_array_equal(await blocker, _x(18.0, 4))
            np.testing.assert_array_equal((await waiting).as_numpy("y"), _x(2.0))
            beat = worker.heartbeat()
            assert beat.sync_in_flight == 0 and beat.sync_queue_wait_ms_p50 > 0
        finally:
            runtime.gate.set()
            await client.close()
            await http.close()


async def test_a_client_deadline_cancels_the_call_before_it_runs(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_grpc_port=0) as worker:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{worker.oip_grpc_port}")
        runtime = gated_runtime()
        try:
            blocker = asyncio.ensure_future(_call(client, model, _x(9.0, 4)))
            assert await asyncio.to_thread(runtime.started.wait, 30)
            with pytest.raises(InferenceServerException) as info:
                await _call(client, model, _x(1.0), client_timeout=0.2)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            with pytest.raises(InferenceServerException) as info:  # the timeout parameter
                await _call(client, model, _x(1.0), timeout=50_000)  # microseconds
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            runtime.gate.set()
            await blocker
            assert await wait_until(lambda: worker.in_flight() == 0, 10)
        finally:
            runtime.gate.set()
            await client.close()
    assert [len(b) for b in runtime.batches] == [4]  # the late requests never ran


async def test_a_draining_worker_is_not_ready_and_refuses_more(
    broker: str, gated_repo: Callable[[float], Path], unique_model: str
) -> None:
    model = f"{unique_model}-gated"
    async with running_worker(broker, gated_repo(1), oip_grpc_port=0) as worker:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{worker.oip_grpc_port}")
        runtime = gated_runtime()
        try:
            blocker = asyncio.ensure_future(_call(client, model, _x(9.0, 4)))
            assert await asyncio.to_thread(runtime.started.wait, 30)
            stopping = asyncio.ensure_future(worker.stop())
            assert await wait_until(lambda: worker.state == "draining", 10)
            assert not await client.is_server_ready()
            with pytest.raises(InferenceServerException) as info:
                await _call(client, model, _x(1.0))
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            runtime.gate.set()
            np.testing.assert_array_equal(await blocker, _x(18.0, 4))
            await stopping
        finally:
            runtime.gate.set()
            await client.close()
