"""Versions rolled out and back while workers serve under load.

A version written into the repository is loaded, warmed up and switched in;
one removed from it is drained and unloaded; one that fails to load is
refused while the others serve. No request fails because of the rollout."""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from fleet.errors import FleetError
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import direct_onnx, rows, running_worker
from worker.service import Worker

WATCH = 0.2  # seconds between the workers' looks at the repository
WAIT = 60.0


async def eventually(predicate: Any, what: str, timeout: float = WAIT) -> None:
    assert await wait_until(predicate, timeout, interval=0.05), f"not in time: {what}"


def _repository(tmp_path: Path, built_models: Path, model: str) -> Path:
    root = tmp_path / "repo"
    (root / model).mkdir(parents=True)
    shutil.copytree(built_models / "digits" / "1", root / model / "1")
    return root


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # loop time the request was sent
    answered: float  # loop time its answer came
    asked: str | None  # the version it named
    version: str  # the version that answered ("" when it failed)
    error: str  # "" when it succeeded


class Traffic:
    """Requests sent back to back from several lanes, each pinned to a
    version or not, every answer recorded and checked against ONNX Runtime."""

    def __init__(self, client: Client, model: str, x: npt.NDArray[np.float32], want: Any) -> None:
        self.client, self.model, self.x, self.want = client, model, x, want
        self.answers: list[Answer] = []
        self.wrong: list[str] = []
        self._lanes: dict[str | None, list[asyncio.Task[None]]] = {}
        self._stop: dict[str | None, asyncio.Event] = {}

    def start(self, asked: str | None, lanes: int = 1) -> None:
        stop = self._stop.setdefault(asked, asyncio.Event())
        for n in range(lanes):
            task = asyncio.get_running_loop().create_task(self._lane(asked, n, stop))
            self._lanes.setdefault(asked, []).append(task)

    async def stop(self, asked: str | None) -> None:
        self._stop[asked].set()
        await asyncio.gather(*self._lanes.pop(asked))

    async def stop_all(self) -> None:
        for asked in list(self._lanes):
            await self.stop(asked)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        """The traffic, every lane stopped on the way out (a failed check too)."""
        try:
            yield self
        finally:
            await self.stop_all()

    async def _lane(self, asked: str | None, n: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        i = n * 97
        while not stop.is_set():
            i = (i + 1) % len(self.x)
            sent = loop.time()
            try:
                reply = await self.client.infer_reply(
                    self.model, {"input": self.x[i : i + 1]}, version=asked, timeout=30
                )
                labels = reply.arrays()["label"]
            except FleetError as exc:
                failed = Answer(sent, loop.time(), asked, "", f"{type(exc).__name__}: {exc}")
                self.answers.append(failed)
                await asyncio.sleep(0.05)
                continue
            if labels.tolist() != self.want[i : i + 1].tolist():
                self.wrong.append(f"row {i}: {labels.tolist()} from version {reply.version}")
            self.answers.append(Answer(sent, loop.time(), asked, reply.version, ""))

    def sent_after(self, t: float, asked: str | None) -> list[Answer]:
        return [a for a in self.answers if a.sent > t and a.asked == asked]


@asynccontextmanager
async def _workers(url: str, root: Path | str, n: int) -> AsyncIterator[list[Worker]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                running_worker(url, root, worker_id=f"w{i}", watch_interval=WATCH)
            )
            for i in range(n)
        ]


def _default(workers: list[Worker], model: str, version: str, *, served: set[str]) -> bool:
    return all(
        w.table.latest.get(model) == version and set(w.table.runtimes.get(model, {})) == served
        for w in workers
    )


async def test_a_version_rolled_out_and_back_under_load_fails_no_request(
    broker_url: str, built_models: Path, tmp_path: Path, unique_model: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    v2 = root / model / "2"
    await _roll_out_and_back(
        broker_url,
        root,
        model,
        write=lambda: shutil.copytree(built_models / "digits" / "1", v2),
        remove=lambda: shutil.rmtree(v2),
    )


@pytest.mark.aws
async def test_a_version_rolled_out_and_back_through_s3_under_load_fails_no_request(
    broker_url: str, bucket: str, built_models: Path, tmp_path: Path, unique_model: str
) -> None:
    """The same, the workers reading ``s3://``: v2 written with ``fleet
    models push``, removed with ``push --delete``."""
    from worker.repository import push_s3

    model = f"{unique_model}-digits"
    local = _repository(tmp_path, built_models, model)
    uri = f"s3://{bucket}/models"
    push_s3(local, uri)
    v2 = local / model / "2"

    def write() -> None:
        shutil.copytree(built_models / "digits" / "1", v2)
        push_s3(local, uri)

    def remove() -> None:
        shutil.rmtree(v2)
        push_s3(local, uri, delete=True)

    await _roll_out_and_back(broker_url, uri, model, write=write, remove=remove, local=local)


async def _roll_out_and_back(
    broker_url: str,
    root: Path | str,
    model: str,
    *,
    write: Callable[[], object],
    remove: Callable[[], object],
    local: Path | None = None,
) -> None:
    """Under load (unpinned lanes and one pinned to v1), ``write`` v2, pin a
    lane to it once both workers serve it, then ``remove`` it: no request
    fails, pinned ones get their version, unpinned ones v1 before, v2 after
    the switch and v1 after the rollback."""
    x = rows(64, 256, seed=5)
    want = direct_onnx((local or Path(root)) / model, {"input": x})["label"]
    loop = asyncio.get_running_loop()
    async with (
        _workers(broker_url, root, 2) as workers,
        Client(broker_url) as client,
        AsyncExitStack() as stack,
    ):
        traffic = Traffic(client, model, x, want)
        await stack.enter_async_context(traffic.running())
        traffic.start(None, lanes=3)
        traffic.start("1")
        await eventually(
            lambda: len(traffic.sent_after(-math.inf, None)) >= 30, "traffic before the rollout"
        )

        written = loop.time()
        await asyncio.to_thread(write)
        await eventually(
            lambda: _default(workers, model, "2", served={"1", "2"}), "v2 served by both"
        )
        switched = loop.time()
        traffic.start("2")
        await eventually(
            lambda: (
                len(traffic.sent_after(switched, None)) >= 30
                and len(traffic.sent_after(switched, "2")) >= 10
            ),
            "traffic after the switch",
        )
        await traffic.stop("2")  # nothing asks for v2 by name once it is to go

        removing = loop.time()
        await asyncio.to_thread(remove)
        await eventually(lambda: _default(workers, model, "1", served={"1"}), "v2 retired by both")
        rolled_back = loop.time()
        await eventually(
            lambda: len(traffic.sent_after(rolled_back, None)) >= 30, "traffic after the rollback"
        )
        await traffic.stop_all()

    failed = [a for a in traffic.answers if a.error]
    assert not failed, failed[:5]
    assert not traffic.wrong, traffic.wrong[:5]
    # pinned requests get the version they name
    assert {a.version for a in traffic.answers if a.asked == "1"} == {"1"}
    assert {a.version for a in traffic.answers if a.asked == "2"} == {"2"}
    # unpinned: v1 before the write, v2 once both workers switched, v1 after
    # the rollback. A request's version is chosen between its send and its
    # answer, so only those wholly inside a phase are held to it: one sent
    # just before the removal may reach a worker after it, and rightly gets v1.
    unpinned = [a for a in traffic.answers if a.asked is None]
    assert {a.version for a in unpinned if a.answered < written} == {"1"}
    assert {a.version for a in unpinned if switched < a.sent and a.answered < removing} == {"2"}
    assert {a.version for a in unpinned if a.sent > rolled_back} == {"1"}


@pytest.mark.memory
async def test_a_corrupt_version_is_refused_and_the_served_one_keeps_serving(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    x = rows(64, 8, seed=2)
    url = memory_url
    with capture_logs() as logs:
        async with running_worker(url, root, watch_interval=WATCH) as w, Client(url) as client:
            assert w.watcher is not None
            hidden = root / model / ".3"  # written whole, then renamed: no half-written look
            hidden.mkdir()
            (hidden / "model.onnx").write_bytes(b"not an onnx model")
            hidden.rename(root / model / "3")
            await eventually(lambda: (model, "3") in w.watcher.refused, "v3 refused")  # type: ignore[union-attr]
            reply = await client.infer_reply(model, {"input": x})
            assert reply.ok and reply.version == "1"
            assert w.table.latest[model] == "1" and set(w.table.runtimes[model]) == {"1"}
            details = w._details()  # what /readyz shows
            assert f"{model}:3" in details["refused"]  # type: ignore[operator]
            # what `fleet models list --worker` shows (the OIP repository index)
            (three,) = [e for e in w.watcher.index() if e["version"] == "3"]
            assert three["state"] == "UNAVAILABLE" and three["reason"]
            metrics = w.metrics.render().decode()
            failures = f'fleet_worker_model_load_failures_total{{model="{model}",version="3"}} 1.0'
            assert failures in metrics
            await asyncio.sleep(5 * WATCH)  # the same files are not tried again
            assert failures in w.metrics.render().decode()

            # good files in its place are loaded
            shutil.rmtree(root / model / "3")
            shutil.copytree(built_models / "digits" / "1", hidden)
            hidden.rename(root / model / "3")
            await eventually(lambda: w.table.latest[model] == "3", "v3 served once mended")
            assert (model, "3") not in w.watcher.refused
            reply = await client.infer_reply(model, {"input": x})
            assert reply.ok and reply.version == "3"
    refused = [e for e in logs if e["event"] == "model version refused"]
    assert len(refused) == 1 and refused[0]["version"] == "3"
    assert refused[0]["log_level"] == "error" and refused[0]["error"]


@pytest.mark.memory
async def test_a_new_model_is_served_and_a_last_version_never_unloaded(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    model, other = f"{unique_model}-digits", f"{unique_model}-other"
    root = _repository(tmp_path, built_models, model)
    x = rows(64, 4, seed=3)
    url = memory_url
    with capture_logs() as logs:
        async with running_worker(url, root, watch_interval=WATCH) as w, Client(url) as client:
            shutil.copytree(built_models / "digits" / "1", root / other / "7")
            await eventually(lambda: other in w.table.runtimes, "the new model served")
            reply = await client.infer_reply(other, {"input": x}, timeout=10)
            assert reply.ok and reply.version == "7"

            shutil.rmtree(root / other)  # its only version: kept
            await asyncio.sleep(5 * WATCH)
            assert set(w.table.runtimes[other]) == {"7"}
            reply = await client.infer_reply(other, {"input": x}, timeout=10)
            assert reply.ok and reply.version == "7"
    kept = [e for e in logs if "last version" in e["event"]]
    assert [(e["model"], e["version"]) for e in kept] == [(other, "7")]


@pytest.mark.memory
async def test_a_version_is_read_only_once_its_files_stop_changing(
    built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    """A version directory being written (here: its config first, the model
    file a moment later) is neither refused nor loaded half-written."""
    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    async with running_worker(memory_url, root, watch_interval=60.0) as w:
        assert w.watcher is not None
        w.watcher.settle = 60.0  # this test looks itself
        v2 = root / model / "2"
        v2.mkdir()
        (v2 / "config.toml").write_text("max_batch_size = 8\n")
        assert await w.watcher.poll()  # seen, pending
        shutil.copyfile(built_models / "digits" / "1" / "model.onnx", v2 / "model.onnx")
        assert await w.watcher.poll()  # changed since: still pending
        assert not w.watcher.refused and set(w.table.runtimes[model]) == {"1"}
        assert not await w.watcher.poll()  # unchanged for one look: loaded
        assert w.table.latest[model] == "2"
        assert w.table.runtimes[model]["2"].max_batch_size == 8


@pytest.mark.aws
async def test_a_version_pushed_to_s3_is_served(
    bucket: str, built_models: Path, tmp_path: Path, unique_model: str, memory_url: str
) -> None:
    from worker.repository import push_s3

    model = f"{unique_model}-digits"
    root = _repository(tmp_path, built_models, model)
    uri = f"s3://{bucket}/models"
    push_s3(root, uri)
    url = memory_url
    x = rows(64, 4, seed=4)
    async with running_worker(url, uri, watch_interval=WATCH) as w, Client(url) as client:
        assert set(w.table.runtimes[model]) == {"1"}
        shutil.copytree(built_models / "digits" / "1", root / model / "2")
        push_s3(root, uri)
        await eventually(lambda: w.table.latest[model] == "2", "v2 pushed and served")
        reply = await client.infer_reply(model, {"input": x}, timeout=10)
        assert reply.ok and reply.version == "2"
        shutil.rmtree(root / model / "2")
        push_s3(root, uri, delete=True)  # the rollback
        await eventually(lambda: set(w.table.runtimes[model]) == {"1"}, "v2 retired")
        reply = await client.infer_reply(model, {"input": x}, timeout=10)
        assert reply.ok and reply.version == "1"
