"""KServe's own Python clients (the ``kserve`` package, unmodified) against a
worker's OIP endpoints: ``InferenceRESTClient`` (protocol v2) and
``InferenceGRPCClient``.

The clients run in a subprocess. ``import kserve`` loads KServe's generated
protobuf modules, which declare the protocol's messages under the package
``inference`` in protobuf's default pool; tritonclient's gRPC modules declare
the same names there, and a process can hold only one of the two (a
"duplicate symbol" TypeError at import). The worker's own messages are under
``fleet.oip.v2`` and clash with neither, so the worker runs here, in the test,
and the client script gets its ports and a list of calls, and answers with one
JSON line: each call's value or the error the client raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import direct_onnx, rows, running_worker
from worker.service import Worker

pytestmark = pytest.mark.memory

Call = dict[str, Any]
Result = dict[str, Any]
Status = tuple[str, int | str]  # the exception KServe's client raised, and its status

# The client side: plain KServe, as a user would call it. Its argument is a
# JSON file: {"rest": base URL, "grpc": host:port, "out": a folder, "calls": [...]}.
_CLIENT = """
import asyncio
import json
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput


def request(call):
    inputs = []
    for spec in call["inputs"]:
        array = np.load(spec["npy"])
        tensor = InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=spec["binary"])
        inputs.append(tensor)
    outputs = None
    if call.get("outputs") is not None:
        outputs = [
            RequestedOutput(o["name"], None if o.get("binary") is None else
                            {"binary_data": o["binary"]})
            for o in call["outputs"]
        ]
    return InferRequest(
        call["model"],
        inputs,
        request_id=call.get("id"),
        request_outputs=outputs,
        model_version=call.get("version"),
    )


def answer(response, out, tag):
    outputs = []
    for i, o in enumerate(response.outputs):
        path = out / f"{tag}-{i}.npy"
        np.save(path, o.as_numpy())
        outputs.append(
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape), "npy": str(path)}
        )
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }


def tensors(specs):
    return [[t.name, t.datatype, list(t.shape)] for t in specs]


async def rest_call(client, base, call, out, tag):
    kind = call["call"]
    if kind == "live":
        return await client.is_server_live(base)
    if kind == "ready":
        return await client.is_server_ready(base)
    if kind == "model_ready":
        return await client.is_model_ready(base, call["model"])
    if kind == "infer":
        return answer(await client.infer(base, request(call), model_name=call["model"]), out, tag)
    raise ValueError(kind)


async def grpc_call(client, stub, call, out, tag):
    kind = call["call"]
    if kind == "live":
        return await client.is_server_live()
    if kind == "ready":
        return await client.is_server_ready()
    if kind == "model_ready":
        return await client.is_model_ready(call["model"])
    if kind == "infer":
        return answer(await client.infer(request(call)), out, tag)
    if kind == "server_metadata":  # InferenceGRPCClient has no call for it: KServe's stub
        meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
        return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
    if kind == "model_metadata":
        ask = pb.ModelMetadataRequest(name=call["model"], version=call.get("version") or "")
        meta = await stub.ModelMetadata(ask)
        return {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": tensors(meta.inputs),
            "outputs": tensors(meta.outputs),
        }
    raise ValueError(kind)


async def main(plan):
    out = Path(plan["out"])
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    client = InferenceGRPCClient(plan["grpc"], timeout=30)
    channel = grpc.aio.insecure_channel(plan["grpc"])
    stub = GRPCInferenceServiceStub(channel)
    results = []
    try:
        for tag, call in enumerate(plan["calls"]):
            try:
                if call["via"] == "rest":
                    value = await rest_call(rest, plan["rest"], call, out, tag)
                else:
                    value = await grpc_call(client, stub, call, out, tag)
                results.append({"value": value})
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                results.append({"error": {"type": "HTTPStatusError", "status": status,
                                          "message": str(exc)}})
            except grpc.aio.AioRpcError as exc:
                results.append({"error": {"type": "AioRpcError", "status": exc.code().name,
                                          "message": exc.details() or ""}})
            except Exception as exc:  # what else the client raised, for the test to judge
                results.append({"error": {"type": type(exc).__name__, "status": None,
                                          "message": str(exc)}})
    finally:
        await rest.close()
        await client.close()
        await channel.close()
    print(json.dumps(results))


asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
"""


@pytest.fixture
async def kserve_worker(broker: str, model_repo: Path) -> AsyncIterator[Worker]:
    """A worker serving the demo models over OIP HTTP and OIP gRPC."""
    async with running_worker(broker, model_repo, oip_port=0, oip_grpc_port=0) as worker:
        yield worker


async def kserve(tmp_path: Path, worker: Worker, calls: list[Call]) -> list[Result]:
    """Make ``calls`` with KServe's clients in a subprocess; one result each:
    ``{"value": ...}`` or ``{"error": {"type", "status", "message"}}``."""
    script, plan = tmp_path / "kserve_client.py", tmp_path / f"plan-{uuid.uuid4().hex}.json"
    out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    script.write_text(_CLIENT, encoding="utf-8")
    plan.write_text(
        json.dumps(
            {
                "rest": f"http://127.0.0.1:{worker.oip_port}",
                "grpc": f"127.0.0.1:{worker.oip_grpc_port}",
                "out": str(out),
                "calls": calls,
            }
        ),
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(plan),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, stderr.decode(errors="replace")[-4000:]
    results: list[Result] = json.loads(stdout.decode().strip().splitlines()[-1])
    assert len(results) == len(calls)
    return results


def tensor(
    tmp_path: Path, array: npt.NDArray[Any], datatype: str = "FP32", *, binary: bool = True
) -> dict[str, Any]:
    """An input named ``input``: binary (raw over gRPC, after the JSON over
    REST) or in the JSON (typed ``contents`` over gRPC)."""
    path = tmp_path / f"in-{uuid.uuid4().hex}.npy"
    np.save(path, array)
    return {"name": "input", "datatype": datatype, "npy": str(path), "binary": binary}


def value(result: Result) -> Any:
    assert "error" not in result, result
    return result["value"]


def error(result: Result) -> Status:
    assert "value" not in result, result
    return result["error"]["type"], result["error"]["status"]


def outputs(answer: dict[str, Any]) -> dict[str, npt.NDArray[Any]]:
    return {o["name"]: np.load(o["npy"]) for o in answer["outputs"]}


def infer(via: str, model: str, *inputs: dict[str, Any], **more: Any) -> Call:
    """An inference call through KServe's REST (``via="rest"``) or gRPC client."""
    return {"via": via, "call": "infer", "model": model, "inputs": list(inputs), **more}


async def test_health_readiness_and_metadata(
    kserve_worker: Worker, tmp_path: Path, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    calls: list[Call] = [
        {"via": "grpc", "call": "live"},
        {"via": "grpc", "call": "ready"},
        {"via": "grpc", "call": "model_ready", "model": mlp},
        {"via": "grpc", "call": "model_ready", "model": "absent"},
        {"via": "rest", "call": "live"},  # the client reads {"live": true} from the body
        {"via": "rest", "call": "ready"},  # and {"ready": true}
        {"via": "rest", "call": "model_ready", "model": mlp},
        {"via": "rest", "call": "model_ready", "model": "absent"},
        {"via": "grpc", "call": "server_metadata"},
        {"via": "grpc", "call": "model_metadata", "model": mlp},
        {"via": "grpc", "call": "model_metadata", "model": mlp, "version": "1"},
        {"via": "grpc", "call": "model_metadata", "model": "absent"},
    ]
    results = await kserve(tmp_path, kserve_worker, calls)
    assert [value(r) for r in results[:8]] == [True, True, True, False, True, True, True, False]
    server = value(results[8])
    assert server["name"] == "fleet" and "binary_tensor_data" in server["extensions"]
    for result in results[9:11]:
        assert value(result) == {
            "name": mlp,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [["input", "FP32", [-1, 256]]],
            "outputs": [["logits", "FP32", [-1, 10]]],
        }
    assert error(results[11]) == ("AioRpcError", "NOT_FOUND")


async def test_outputs_equal_onnx_runtime(
    kserve_worker: Worker, tmp_path: Path, model_repo: Path, unique_model: str
) -> None:
    digits, mlp = f"{unique_model}-digits", f"{unique_model}-mlp"
    x, y = rows(64, 5, seed=3), rows(256, 3, seed=5)
    want_digits = direct_onnx(model_repo / digits, {"input": x})
    want_mlp = direct_onnx(model_repo / mlp, {"input": y})
    binary_x, json_x = tensor(tmp_path, x), tensor(tmp_path, x, binary=False)
    both = [{"name": "probabilities", "binary": True}, {"name": "label", "binary": False}]
    calls = [
        infer("rest", digits, binary_x, id="rest-1"),
        infer("rest", digits, json_x, outputs=both),
        infer("grpc", digits, binary_x, id="grpc-1"),
        infer("grpc", digits, json_x, outputs=[{"name": "label"}]),
        infer("rest", mlp, tensor(tmp_path, y)),
        infer("grpc", mlp, tensor(tmp_path, y), version="1"),
    ]
    results = [value(r) for r in await kserve(tmp_path, kserve_worker, calls)]
    rest_1, rest_2, grpc_1, grpc_2, rest_mlp, grpc_mlp = results
    assert rest_1["id"] == "rest-1" and grpc_1["id"] == "grpc-1"
    assert all(r["model_name"] == digits for r in results[:4])
    # the worker answers model_version over REST too; KServe's REST client does not read it
    assert grpc_1["model_version"] == "1" and grpc_mlp["model_version"] == "1"
    for answer in (rest_1, grpc_1):  # all outputs, in the model's order
        assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [
            ("label", "INT64", [5]),
            ("probabilities", "FP32", [5, 10]),
        ]
    assert [o["name"] for o in rest_2["outputs"]] == ["probabilities", "label"]
    assert [o["name"] for o in grpc_2["outputs"]] == ["label"]
    for answer in (rest_1, rest_2, grpc_1, grpc_2):
        got = outputs(answer)
        np.testing.assert_array_equal(got["label"], want_digits["label"])
        if "probabilities" in got:
            # a batch's float sums may run in another order than a lone run's
            np.testing.assert_allclose(
                got["probabilities"], want_digits["probabilities"], rtol=1e-5, atol=1e-6
            )
    for answer in (rest_mlp, grpc_mlp):
        assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [
            ("logits", "FP32", [3, 10])
        ]
        logits = outputs(answer)["logits"]
        np.testing.assert_allclose(logits, want_mlp["logits"], rtol=1e-4, atol=1e-5)


async def test_errors_have_the_status_kserve_expects(
    kserve_worker: Worker, tmp_path: Path, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    good, narrow = tensor(tmp_path, rows(256, 1)), tensor(tmp_path, rows(255, 1))
    fp64 = rows(256, 1).astype(np.float64)
    not_found: dict[str, Status] = {
        "rest": ("HTTPStatusError", 404),
        "grpc": ("AioRpcError", "NOT_FOUND"),
    }
    invalid: dict[str, Status] = {
        "rest": ("HTTPStatusError", 400),
        "grpc": ("AioRpcError", "INVALID_ARGUMENT"),
    }
    cases: list[tuple[Call, Status, str]] = []  # the call, its error, a word of its text
    for via in ("rest", "grpc"):
        cases.append((infer(via, "absent", good), not_found[via], "'absent'"))
        cases.append((infer(via, mlp, narrow), invalid[via], "[1, 255]"))
        for binary in (True, False):  # raw or typed contents; after the JSON or in it
            wide = tensor(tmp_path, fp64, "FP64", binary=binary)
            cases.append((infer(via, mlp, wide), invalid[via], "FP64"))
    cases.append((infer("grpc", mlp, good, version="9"), not_found["grpc"], "'9'"))
    then = [infer(via, mlp, good) for via in ("rest", "grpc")]
    results = await kserve(tmp_path, kserve_worker, [call for call, _, _ in cases] + then)
    for (call, status, named), result in zip(cases, results[: len(cases)], strict=True):
        assert error(result) == status, call
        assert named in result["error"]["message"], (call, result)  # the server's own text
    for result in results[len(cases) :]:  # and the worker carries on
        assert [o["shape"] for o in value(result)["outputs"]] == [[1, 10]]


async def test_an_oversize_message_is_refused(
    broker: str, model_repo: Path, tmp_path: Path, unique_model: str
) -> None:
    mlp = f"{unique_model}-mlp"
    big, one = tensor(tmp_path, rows(256, 8)), tensor(tmp_path, rows(256, 1))
    calls = [infer(via, mlp, inputs) for inputs in (big, one) for via in ("rest", "grpc")]
    async with running_worker(
        broker, model_repo, oip_port=0, oip_grpc_port=0, max_message_bytes=4096
    ) as worker:
        results = await kserve(tmp_path, worker, calls)
    assert error(results[0]) == ("HTTPStatusError", 413)
    assert "4096" in results[0]["error"]["message"]
    assert error(results[1]) == ("AioRpcError", "RESOURCE_EXHAUSTED")
    for result in results[2:]:
        assert [o["shape"] for o in value(result)["outputs"]] == [[1, 10]]
