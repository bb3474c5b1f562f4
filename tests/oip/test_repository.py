"""The OIP repository extension (index, load, unload) with Triton's HTTP
client, and ``fleet models load|unload|list --worker``, on a worker that does
not watch its repository (explicit control)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http.aio as httpclient
from tritonclient.utils import InferenceServerException

from fleet.errors import ModelNotFound
from fleetctl.cli import build_parser
from producer import Client
from tests.helpers import rows, running_worker
from worker.service import Worker

pytestmark = pytest.mark.memory


@pytest.fixture
def repo(tmp_path: Path, built_models: Path, unique_model: str) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(built_models / "digits" / "1", root / f"{unique_model}-digits" / "1")
    return root


@pytest.fixture
async def explicit(broker: str, repo: Path) -> AsyncIterator[Worker]:
    async with running_worker(broker, repo, oip_port=0, watch_interval=0) as worker:
        yield worker


async def _infer(client: httpclient.InferenceServerClient, model: str, version: str = "") -> str:
    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.asarray(rows(64, 1)))
    result = await client.infer(model, [tensor], model_version=version)
    return str(result.get_response()["model_version"])


async def test_load_and_unload_on_a_worker_that_does_not_watch(
    explicit: Worker, repo: Path, built_models: Path, unique_model: str, broker: str
) -> None:
    model = f"{unique_model}-digits"
    client = httpclient.InferenceServerClient(f"127.0.0.1:{explicit.oip_port}")
    try:
        assert await client.get_model_repository_index() == [
            {"name": model, "version": "1", "state": "READY"}
        ]
        shutil.copytree(built_models / "digits" / "1", repo / model / "2")
        await asyncio.sleep(0.5)
        assert set(explicit.table.runtimes[model]) == {"1"}  # nobody looked
        await client.load_model(model)  # looks now; v2 need not settle
        assert set(explicit.table.runtimes[model]) == {"1", "2"}
        assert await _infer(client, model) == "2" and await _infer(client, model, "1") == "1"
        index = await client.get_model_repository_index()
        assert [(e["version"], e["state"]) for e in index] == [("1", "READY"), ("2", "READY")]

        await client.unload_model(model)
        assert model not in explicit.table.runtimes
        with pytest.raises(InferenceServerException) as info:
            await _infer(client, model)
        assert info.value.status() == "404"
        index = await client.get_model_repository_index()
        assert {(e["state"], e.get("reason")) for e in index} == {("UNAVAILABLE", "unloaded")}
        assert await client.get_model_repository_index(headers=None) == index
        assert not [e for e in index if e["state"] == "READY"]

        await client.load_model(model)  # back, queues consumed again
        async with Client(broker) as queued:
            reply = await queued.infer_reply(model, {"input": rows(64, 1)}, timeout=10)
        assert reply.ok and reply.version == "2"
    finally:
        await client.close()


async def test_load_errors_say_why(explicit: Worker, repo: Path, unique_model: str) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{explicit.oip_port}")
    broken = f"{unique_model}-broken"
    (repo / broken / "1").mkdir(parents=True)
    (repo / broken / "1" / "model.onnx").write_bytes(b"not a model")
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.load_model("absent")
        assert info.value.status() == "400" and "'absent' is not in" in str(info.value.message())
        with pytest.raises(InferenceServerException) as info:
            await client.load_model(broken)
        assert info.value.status() == "400"
        assert f"model {broken!r} could not be loaded: version 1:" in str(info.value.message())
        with pytest.raises(InferenceServerException) as info:
            await client.unload_model("absent")
        assert info.value.status() == "400"
        with pytest.raises(InferenceServerException) as info:
            await client.load_model(f"{unique_model}-digits", config='{"max_batch_size": 2}')
        assert info.value.status() == "400" and "no parameters" in str(info.value.message())
        assert await _infer(client, f"{unique_model}-digits") == "1"  # and it carries on
    finally:
        await client.close()


def _run(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.handler(args))


async def test_the_cli_loads_unloads_and_lists_a_worker(
    explicit: Worker, unique_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"{unique_model}-digits"
    url = f"http://127.0.0.1:{explicit.oip_port}"
    assert await asyncio.to_thread(_run, "models", "unload", model, "--worker", url) == 0
    assert model not in explicit.table.runtimes
    assert await asyncio.to_thread(_run, "models", "list", "--worker", url) == 0
    assert await asyncio.to_thread(_run, "models", "load", model, "--worker", url) == 0
    assert await asyncio.to_thread(_run, "models", "list", "--worker", url) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if "[info" not in line]
    assert out == [
        f"{model}: unloaded on {url}",
        f"{model} 1: UNAVAILABLE (unloaded)",
        f"{model}: loaded on {url}",
        f"{model} 1: READY",
    ]
    assert await asyncio.to_thread(_run, "models", "load", "absent", "--worker", url) == 1
    assert "fleet models load: 400: model 'absent' is not in" in capsys.readouterr().err
    with pytest.raises(ModelNotFound):
        assert explicit.watcher is not None
        await explicit.watcher.unload("absent")
