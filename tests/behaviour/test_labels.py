"""What a fleet serves of a model, set in its repository: version policies,
labels, splits, and requests for a version that a worker is about to serve.

The repository's ``<model>/model.toml`` (written here by ``fleet models
label``'s code) is the fleet's: every worker follows it on its next look."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fleet.errors import ModelNotFound
from producer import Client
from tests.behaviour.test_rollout import WATCH, Traffic, _repository, eventually
from tests.helpers import direct_onnx, rows, running_worker
from worker.repository import update_policy
from worker.serving_policy import ModelPolicy


def _versions(built_models: Path, root: Path, model: str, *versions: str) -> None:
    for v in versions:
        hidden = root / model / f".{v}"  # written whole, then renamed
        shutil.copytree(built_models / "digits" / "1", hidden)
        hidden.rename(root / model / v)


def _label(
    root: Path, model: str, label: str, split: dict[str, float], *, default: bool = False
) -> None:
    def change(policy: ModelPolicy) -> ModelPolicy:
        policy = policy.with_label(label, split)
        return policy.with_default(label) if default else policy

    update_policy(root, model, change)


async def test_a_version_pinned_before_every_worker_serves_it_is_held_not_failed(
    broker_url: str, built_models: Path, tmp_path: Path, unique_model: str
) -> None:
    """Worker ``a`` looks at the repository often, ``b`` every 30 s: once ``a``
    serves v2, requests pinned to v2 reach ``b`` too. ``b`` holds them, looks
    at once, loads v2 and answers them: none fails."""
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    x = rows(64, 64, seed=8)
    want = direct_onnx(root / model, {"input": x})["label"]
    with capture_logs() as logs:
        async with (
            running_worker(broker_url, root, worker_id="a", watch_interval=WATCH) as a,
            running_worker(broker_url, root, worker_id="b", watch_interval=30.0) as b,
            Client(broker_url) as client,
            AsyncExitStack() as stack,
        ):
            _versions(built_models, root, model, "2")
            await eventually(lambda: "2" in a.table.runtimes[model], "v2 served by a")
            assert "2" not in b.table.runtimes[model]
            traffic = Traffic(client, model, x, want)
            await stack.enter_async_context(traffic.running())
            traffic.start("2", lanes=4)
            traffic.start(None)
            began = time.monotonic()
            await eventually(lambda: "2" in b.table.runtimes[model], "v2 served by b", 20)
            woke_after = time.monotonic() - began
            await eventually(lambda: len(traffic.answers) >= 60, "traffic")
            await traffic.stop_all()
    assert woke_after < 15, woke_after  # long before b's own look in 30 s
    failed = [answer for answer in traffic.answers if answer.error]
    assert not failed, failed[:5]
    assert not traffic.wrong, traffic.wrong[:5]
    assert {answer.version for answer in traffic.answers if answer.asked == "2"} == {"2"}
    released = [e for e in logs if e["event"] == "held requests released"]
    assert released and all(e["version"] == "2" for e in released)
    assert sum(e["requests"] for e in released) >= 1


@pytest.mark.memory
async def test_a_version_nobody_serves_fails_fast_naming_what_is_served(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _label(root, model, "stable", {"1": 1})
    x = rows(64, 1)
    for interval in (60.0, 0.0):  # watching (one look first), and not
        async with (
            running_worker(memory_url, root, watch_interval=interval),
            Client(memory_url) as client,
        ):
            began = time.monotonic()
            with pytest.raises(ModelNotFound) as info:
                await client.infer(model, {"input": x}, version="9", timeout=30)
            assert time.monotonic() - began < 5
            assert "'9'" in info.value.message and "versions: ['1']" in info.value.message
            assert "labels: ['stable']" in info.value.message
            reply = await client.infer_reply(model, {"input": x}, version="stable")
            assert reply.ok and reply.version == "1"


@pytest.mark.memory
async def test_labels_a_default_a_split_and_promotion_then_rollback(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _versions(built_models, root, model, "2")
    _label(root, model, "stable", {"1": 1}, default=True)
    _label(root, model, "canary", {"2": 1})
    _label(root, model, "live", {"1": 90, "2": 10})
    x = rows(64, 1)
    async with (
        running_worker(memory_url, root, watch_interval=WATCH) as w,
        Client(memory_url) as client,
    ):

        async def version(asked: str | None) -> str:
            reply = await client.infer_reply(model, {"input": x}, version=asked, timeout=30)
            assert reply.ok, reply.error
            return reply.version

        assert set(w.table.runtimes[model]) == {"1", "2"}
        assert [await version(None), await version("stable"), await version("canary")] == [
            "1",
            "1",
            "2",
        ]
        got: Counter[str] = Counter()
        for _ in range(10):  # 10,000 requests for the split label
            got.update(await asyncio.gather(*(version("live") for _ in range(1000))))
        assert got.total() == 10_000
        assert abs(got["2"] / 10_000 - 0.10) <= 0.02, got
        metrics = w.metrics.render().decode()  # per version: the two can be compared
        assert f'model="{model}",outcome="ok",version="2"}} {got["2"] + 1}.0' in metrics
        assert f'model="{model}",outcome="ok",version="1"}} {got["1"] + 2}.0' in metrics

        _label(root, model, "stable", {"2": 1})  # promote: one command
        await eventually(lambda: w.table.resolve(model, None, "r") == "2", "promoted")
        assert await version(None) == "2"
        _label(root, model, "stable", {"1": 1})  # and roll back
        await eventually(lambda: w.table.resolve(model, None, "r") == "1", "rolled back")
        assert await version(None) == "1"


@pytest.mark.memory
async def test_a_version_policy_serves_the_newest_and_a_refused_one_replaces_nothing(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _versions(built_models, root, model, "2")
    (root / model / "model.toml").write_text("[versions]\nlatest = 1\n")
    x = rows(64, 1)
    async with (
        running_worker(memory_url, root, watch_interval=WATCH) as w,
        Client(memory_url) as client,
    ):
        assert set(w.table.runtimes[model]) == {"2"}  # at start: the policy's choice
        _versions(built_models, root, model, "3")
        await eventually(lambda: set(w.table.runtimes[model]) == {"3"}, "v3 in, v2 out")
        hidden = root / model / ".4"
        hidden.mkdir()
        (hidden / "model.onnx").write_bytes(b"not a model")
        hidden.rename(root / model / "4")
        assert w.watcher is not None
        watcher = w.watcher
        await eventually(lambda: (model, "4") in watcher.refused, "v4 refused")
        await asyncio.sleep(5 * WATCH)
        assert set(w.table.runtimes[model]) == {"3"}  # the refused one replaced nothing
        reply = await client.infer_reply(model, {"input": x})
        assert reply.ok and reply.version == "3"
        with pytest.raises(ModelNotFound, match=r"could not be loaded|no version"):
            await client.infer(model, {"input": x}, version="4", timeout=30)

        (root / model / "model.toml").write_text('[versions]\nspecific = ["2"]\n')
        await eventually(lambda: set(w.table.runtimes[model]) == {"2"}, "only v2")


@pytest.mark.memory
async def test_a_bad_model_toml_is_refused_once_and_the_last_one_stays(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _label(root, model, "stable", {"1": 1})
    x = rows(64, 1)
    with capture_logs() as logs:
        async with (
            running_worker(memory_url, root, watch_interval=WATCH) as w,
            Client(memory_url) as client,
        ):
            (root / model / "model.toml").write_text('[labels]\nstable = "7"\n')
            await eventually(lambda: "policies refused" in w._details(), "refused")
            await asyncio.sleep(5 * WATCH)
            details = w._details()
            assert "no version 7" in details["policies refused"][model]  # type: ignore[index]
            reply = await client.infer_reply(model, {"input": x}, version="stable")
            assert reply.ok and reply.version == "1"
    refused = [e for e in logs if e["event"] == "model policy refused; the last one stays"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"


@pytest.mark.aws
async def test_a_label_set_on_s3_is_followed(
    bucket: str, built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    from worker.repository import push_s3

    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _versions(built_models, root, model, "2")
    _label(root, model, "stable", {"1": 1}, default=True)
    uri = f"s3://{bucket}/models"
    push_s3(root, uri)
    x = rows(64, 1)
    async with (
        running_worker(memory_url, uri, watch_interval=WATCH) as w,
        Client(memory_url) as client,
    ):
        assert (await client.infer_reply(model, {"input": x})).version == "1"
        policy, where = update_policy(uri, model, lambda p: p.with_label("stable", {"2": 1}))
        assert where == f"{uri}/{model}/model.toml" and policy.labels["stable"] == {"2": 1.0}
        await eventually(lambda: w.table.resolve(model, None, "r") == "2", "label followed")
        assert (await client.infer_reply(model, {"input": x})).version == "2"


@pytest.mark.memory
async def test_a_label_goes_where_a_version_goes_over_oip(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    import numpy as np
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient
    from tritonclient.utils import InferenceServerException

    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _versions(built_models, root, model, "2")
    _label(root, model, "canary", {"2": 1})
    _label(root, model, "stable", {"1": 1}, default=True)
    x = rows(64, 1)
    async with running_worker(
        memory_url, root, watch_interval=WATCH, oip_port=0, oip_grpc_port=0
    ) as w:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{w.oip_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{w.oip_grpc_port}")
        try:
            for lib, client in ((httpclient, http), (grpcclient, grpc)):
                tensor = lib.InferInput("input", [1, 64], "FP32")
                tensor.set_data_from_numpy(np.asarray(x))
                for asked, want in (("canary", "2"), ("stable", "1"), ("", "1"), ("2", "2")):
                    result = await client.infer(model, [tensor], model_version=asked)
                    response = result.get_response()
                    got = response["model_version"] if lib is httpclient else response.model_version
                    assert got == want, (lib.__name__, asked)
                assert await client.is_model_ready(model, "canary")
                with pytest.raises(InferenceServerException) as info:
                    await client.infer(model, [tensor], model_version="9")
                assert "versions: ['1', '2']" in str(info.value.message())
                assert "labels: ['canary', 'stable']" in str(info.value.message())
        finally:
            await http.close()
            await grpc.close()


@pytest.mark.memory
async def test_a_refused_version_never_retires_one_the_policy_keeps(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    """latest = 2 with versions 1 and 2 served: a corrupt 3 is refused, and
    1 keeps serving (the newest two that load are still 1 and 2)."""
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    _versions(built_models, root, model, "2")
    (root / model / "model.toml").write_text("[versions]\nlatest = 2\n")
    async with running_worker(memory_url, root, watch_interval=WATCH) as w:
        assert w.watcher is not None
        watcher = w.watcher
        hidden = root / model / ".3"
        hidden.mkdir()
        (hidden / "model.onnx").write_bytes(b"not a model")
        hidden.rename(root / model / "3")
        await eventually(lambda: (model, "3") in watcher.refused, "v3 refused")
        for _ in range(5):
            await watcher.poll()
            assert set(w.table.runtimes[model]) == {"1", "2"}


@pytest.mark.memory
async def test_a_held_request_past_its_deadline_is_dropped(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    """A version on its way that does not arrive in time: requests held for
    it are dropped at their deadline, and no longer count as in flight."""
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    async with (
        running_worker(memory_url, root, watch_interval=WATCH) as w,
        Client(memory_url) as client,
    ):
        assert w.watcher is not None
        w.watcher.settle = 60.0  # seen pending, next look in a minute: on its way till then
        (root / model / "2").mkdir()  # its model file never comes
        (root / model / "2" / "config.toml").write_text("max_batch_size = 4\n")
        await eventually(lambda: "2" in w.table.coming.get(model, ()), "v2 on its way")
        calls = [
            asyncio.ensure_future(
                client.infer(model, {"input": rows(64, 1)}, version="2", timeout=0.5)
            )
            for _ in range(3)
        ]
        await eventually(lambda: w.table.held() == 3, "held")
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(type(r).__name__ == "DeadlineExceeded" for r in results), results
        await eventually(lambda: w.table.held() == 0 and w.in_flight() == 0, "dropped", 10)
        reply = await client.infer_reply(model, {"input": rows(64, 1)})
        assert reply.ok and reply.version == "1"
