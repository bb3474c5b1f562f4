"""Triton's own HTTP client, unmodified, against a worker's OIP endpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import direct_onnx, rows
from worker.service import Worker

pytestmark = pytest.mark.memory


@pytest.fixture
async def triton(oip_worker: Worker) -> AsyncIterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{oip_worker.oip_port}")
    yield client
    await client.close()


def _input(name: str, array: npt.NDArray[Any], *, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


async def test_health_and_metadata(
    triton: httpclient.InferenceServerClient, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    assert await triton.is_server_live()
    assert await triton.is_server_ready()
    meta = await triton.get_server_metadata()
    assert meta["name"] == "fleet" and "binary_tensor_data" in meta["extensions"]
    assert await triton.is_model_ready(mlp)
    assert await triton.is_model_ready(mlp, "1")
    assert not await triton.is_model_ready(mlp, "7")
    assert not await triton.is_model_ready("absent")
    for version in ("", "1"):
        model = await triton.get_model_metadata(mlp, version)
        assert model["name"] == mlp and model["versions"] == ["1"]
        assert model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}]
        assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    with pytest.raises(InferenceServerException) as info:
        await triton.get_model_metadata("absent")
    assert info.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_outputs_equal_onnx_runtime(
    triton: httpclient.InferenceServerClient,
    model_repo: Path,
    unique_model: str,
    binary: bool,
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 5, seed=3)
    want = direct_onnx(model_repo / digits, {"input": x})
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    result = await triton.infer(
        digits, [_input("input", x, binary=binary)], outputs=outputs, request_id="r-1"
    )
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == digits
    assert response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "label"]
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    # a batch's float sums may run in another order than a lone run's: close, not equal
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6
    )


async def test_requested_outputs_and_defaults(
    triton: httpclient.InferenceServerClient, model_repo: Path, unique_model: str
) -> None:
    digits, mlp = f"{unique_model}-digits", f"{unique_model}-mlp"
    x = rows(64, 2, seed=4)
    only = await triton.infer(
        digits,
        [_input("input", x, binary=True)],
        outputs=[httpclient.InferRequestedOutput("label")],
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]
    assert only.as_numpy("probabilities") is None
    x = rows(256, 3, seed=5)
    every = await triton.infer(mlp, [_input("input", x, binary=False)], model_version="1")
    assert "id" not in every.get_response()  # none was given
    want = direct_onnx(model_repo / mlp, {"input": x})
    np.testing.assert_allclose(every.as_numpy("logits"), want["logits"], rtol=1e-4, atol=1e-5)


async def test_errors_have_the_status_clients_expect(
    triton: httpclient.InferenceServerClient, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    good = _input("input", rows(256, 1), binary=True)
    cases: list[tuple[str, str, list[httpclient.InferInput], str]] = [
        ("absent", "", [good], "404"),
        (mlp, "9", [good], "404"),
        (mlp, "", [_input("input", rows(255, 1), binary=True)], "400"),  # wrong shape
        (mlp, "", [_input("other", rows(256, 1), binary=True)], "400"),  # unknown input
    ]
    wrong_type = httpclient.InferInput("input", [1, 256], "FP64")
    wrong_type.set_data_from_numpy(rows(256, 1).astype(np.float64))
    cases.append((mlp, "", [wrong_type], "400"))
    for model, version, inputs, status in cases:
        with pytest.raises(InferenceServerException) as info:
            await triton.infer(model, inputs, model_version=version)
        assert info.value.status() == status, (model, version, info.value.message())
        assert info.value.message()  # the error names what is wrong
    with pytest.raises(InferenceServerException) as info:
        await triton.infer(mlp, [good], outputs=[httpclient.InferRequestedOutput("nope")])
    assert info.value.status() == "400" and "nope" in info.value.message()
    result = await triton.infer(mlp, [good])  # and the worker serves on
    assert result.as_numpy("logits").shape == (1, 10)


async def _post(worker: Worker, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{worker.oip_port}{path}", data=body, headers=headers) as r,
    ):
        return r.status, json.loads(await r.read())


async def test_malformed_bodies_get_400_with_an_error(
    oip_worker: Worker, unique_model: str
) -> None:
    path = f"/v2/models/{unique_model}-mlp/infer"
    row = [0.0] * 256
    bodies = [
        b"{not json",
        b"[]",
        json.dumps({"inputs": []}).encode(),
        json.dumps({"inputs": [{"name": "input", "datatype": "FP99", "shape": [1, 256]}]}).encode(),
        json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": row[:9]}]}
        ).encode(),
        json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": ["a"]}]}
        ).encode(),
        json.dumps(
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": row}],
                "parameters": {"timeout": -5},
            }
        ).encode(),
    ]
    for body in bodies:
        status, doc = await _post(oip_worker, path, body)
        assert status == 400, body[:60]
        assert isinstance(doc["error"], str) and doc["error"]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 256],
                    "parameters": {"binary_data_size": 1024},
                }
            ]
        }
    ).encode()
    for extra, length in [(b"\0" * 1023, str(len(header))), (b"\0" * 1025, str(len(header)))]:
        status, doc = await _post(
            oip_worker, path, header + extra, **{"Inference-Header-Content-Length": length}
        )
        assert status == 400 and "binary" in doc["error"]
    status, _ = await _post(
        oip_worker, path, header + b"\0" * 1024, **{"Inference-Header-Content-Length": "x"}
    )
    assert status == 400


async def test_an_oversize_body_gets_413(broker: str, model_repo: Path, unique_model: str) -> None:
    from tests.helpers import running_worker

    async with running_worker(broker, model_repo, oip_port=0, max_message_bytes=4096) as worker:
        tensor = {"name": "input", "datatype": "FP32", "shape": [8, 256], "data": [0.5] * 2048}
        body = json.dumps({"inputs": [tensor]}).encode()
        status, doc = await _post(worker, f"/v2/models/{unique_model}-mlp/infer", body)
        assert status == 413 and "4096" in doc["error"]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{worker.oip_port}")
        try:
            with pytest.raises(InferenceServerException) as info:
                await client.infer(
                    f"{unique_model}-mlp", [_input("input", rows(256, 8), binary=True)]
                )
            assert info.value.status() == "413"
            one = [_input("input", rows(256, 1), binary=True)]
            ok = await client.infer(f"{unique_model}-mlp", one)
            assert ok.as_numpy("logits").shape == (1, 10)
        finally:
            await client.close()


async def test_the_blocking_client_too(
    oip_worker: Worker, model_repo: Path, unique_model: str
) -> None:
    """tritonclient.http's blocking client (geventhttpclient), from a thread."""
    import tritonclient.http as blocking

    mlp = f"{unique_model}-mlp"
    x = rows(256, 4, seed=9)

    def call() -> npt.NDArray[Any]:
        client = blocking.InferenceServerClient(f"127.0.0.1:{oip_worker.oip_port}")
        try:
            assert client.is_model_ready(mlp)
            tensor = blocking.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            wanted = [blocking.InferRequestedOutput("logits", binary_data=True)]
            return client.infer(mlp, [tensor], outputs=wanted).as_numpy("logits")
        finally:
            client.close()

    got = await asyncio.to_thread(call)
    want = direct_onnx(model_repo / mlp, {"input": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
