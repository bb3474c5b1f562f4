"""The result cache: answers served without the broker for repeated inputs,
never across a model version change, and its hit ratio counted."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest

from fleet.cache import inputs_key
from fleet.contract import Request
from fleet.jobs import open_cache
from fleet.tensor import Tensor
from producer import Client
from tests.helpers import running_worker
from tests.jobs.conftest import build_doubler, redis_url

pytestmark = pytest.mark.jobs


@pytest.fixture(params=["memory", "redis"])
def cache_url(request: pytest.FixtureRequest) -> str:
    return f"memory://cache-{uuid.uuid4().hex[:8]}" if request.param == "memory" else redis_url()


def build_tripler(root: Path, name: str, width: int) -> None:
    """Version 2 of a doubler: triples instead (an answer that tells versions apart)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])], name, [x], [y], [three]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version = root / name / "2"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    (version / "config.toml").write_text("max_batch_size = 64\nmax_wait_ms = 0.0\n")


async def filled(cache_url: str, model: str, version: str, x: np.ndarray) -> None:
    """Wait for the worker's background fill of ``x``'s answer."""
    key = inputs_key(
        Request(id="k", model=model, inputs=(Tensor.from_numpy("x", x),), deadline=0.0)
    )
    async with open_cache(cache_url) as cache:
        for _ in range(200):
            if await cache.get(model, version, key) is not None:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the worker never filled the cache")


def test_the_key_follows_what_decides_the_answer() -> None:
    def key(model: str, data: np.ndarray, **params: object) -> str:
        inputs = (Tensor.from_numpy("x", data),)
        return inputs_key(
            Request(id="a", model=model, inputs=inputs, deadline=0, parameters=params)
        )  # type: ignore[arg-type]

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert key("m", x) == key("m", x.copy(), **{"fleet.claim": "ignored"})
    others = {key("n", x), key("m", x.reshape(3, 2)), key("m", x.astype(np.float64)),
              key("m", x + 1), key("m", x, top_k=3)}  # fmt: skip
    assert key("m", x) not in others and len(others) == 5


async def test_repeated_inputs_are_answered_from_the_cache(
    cache_url: str, model_repo: Path, unique_model: str
) -> None:
    broker, model = f"memory://{unique_model}", f"{unique_model}-big"
    build_doubler(model_repo, model, 8)
    xs = [np.full((1, 8), i, np.float32) for i in range(20)]
    async with (
        running_worker(broker, model_repo, cache=cache_url) as worker,
        Client(broker, cache=cache_url) as client,
    ):
        for x in xs:  # 20 misses, each filled by the worker
            np.testing.assert_array_equal((await client.infer(model, {"x": x}))["y"], x + x)
            await filled(cache_url, model, "1", x)
        for i in range(180):  # then only hits
            x = xs[i % 20]
            np.testing.assert_array_equal((await client.infer(model, {"x": x}))["y"], x + x)
        assert worker.stats.answered_total == 20
    assert (client.stats.cache_hits, client.stats.cache_misses) == (180, 20)
    assert client.stats.cache_hit_ratio == 0.9


async def test_a_new_version_never_serves_the_old_versions_answer(
    cache_url: str, model_repo: Path, unique_model: str
) -> None:
    broker, model = f"memory://{unique_model}", f"{unique_model}-ver"
    build_doubler(model_repo, model, 8)
    x = np.full((1, 8), 7, np.float32)
    async with running_worker(broker, model_repo, cache=cache_url):
        async with Client(broker, cache=cache_url) as client:
            assert (await client.infer_reply(model, {"x": x})).version == "1"
            await filled(cache_url, model, "1", x)
            hit = await client.infer_reply(model, {"x": x})
            assert hit.version == "1" and client.stats.cache_hits == 1
    build_tripler(model_repo, model, 8)  # version 2 rolls out
    async with (
        running_worker(broker, model_repo, worker_id="w2", cache=cache_url) as worker,
        Client(broker, cache=cache_url) as client,
    ):
        reply = await client.infer_reply(model, {"x": x})
        assert reply.version == "2" and client.stats.cache_hits == 0
        np.testing.assert_array_equal(reply.arrays()["y"], x * 3)
        await filled(cache_url, model, "2", x)
        again = await client.infer_reply(model, {"x": x})
        assert again.version == "2" and client.stats.cache_hits == 1
        old = await client.infer_reply(model, {"x": x}, version="1")  # asked for by name
        np.testing.assert_array_equal(old.arrays()["y"], x + x)
        assert worker.stats.answered_total == 1  # version 1 came from the cache
