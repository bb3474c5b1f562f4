"""The broker ingress under faults: replies that cannot be published, malformed
items, oversize replies, foreign reply addresses, redeliveries, crashing
requests, a worker's bound on what it holds, and unknown parameters.

Each test drives a real worker (with a small runtime that needs no model file)
through a broker, publishing raw request frames and reading raw reply frames.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import ParamValue, Priority, Reply, Request
from fleet.errors import ErrorCode, InvalidArgument, Unavailable
from fleet.tensor import DataType, Tensor
from fleet.transport import Transport, connect
from fleet.transport.base import HEARTBEATS, queue_name, wait_until
from fleet.transport.memory import MemoryBroker, _MemoryConsumer
from producer import Client
from tests.helpers import running_worker
from tests.worker.fakes import DoublingRuntime, doubling_repo, loaded
from worker.runtime import Array, Feeds, RuntimeSpec
from worker.service import Worker, WorkerSettings

DOUBLING_CONFIG = 'runtime = "doubling"\nmax_batch_size = 4\nmax_wait_ms = {wait}\n'
# Tests here hold runs in the model's thread (a run that never returns, or not
# until the test says so); no run may be taken onto the event loop.
THREADED = "inline_below_ms = 0\n"


def _request(
    rid: str,
    model: str,
    value: float,
    *,
    rows: int = 1,
    width: int = 2,
    parameters: Mapping[str, ParamValue] | None = None,
) -> Request:
    now = time.time()
    x = np.full((rows, width), value, np.float32)
    return Request(
        id=rid,
        model=model,
        inputs=(Tensor.from_numpy("x", x),),
        deadline=now + 60,
        sent_at=now,
        parameters=dict(parameters or {}),
    )


def _replies(frames: list[bytes]) -> dict[str, Reply]:
    out: dict[str, Reply] = {}
    for frame in frames:
        for item in wire.decode_replies(frame).items:
            assert isinstance(item, Reply)
            out.setdefault(item.id, item)
    return out


async def _settled(raw: Transport, model: str, timeout: float = 30) -> bool:
    """Poll until nothing of ``model`` waits in or is held from its queues."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = await raw.depth(model)
        if depth.backlog == 0:
            return True
        await asyncio.sleep(0.05)
    return False


def _code(reply: Reply) -> int | None:
    return None if reply.error is None else reply.error.code


# --------------------------------------------------------------------------- publish failures


async def test_a_message_whose_replies_cannot_be_published_is_requeued_and_answered(
    broker_url: str,
    tmp_path: Path,
    doubling: RuntimeSpec,
    unique_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=5))
    frames: list[bytes] = []
    async with (
        running_worker(broker_url, root, prefetch=2) as worker,
        connect(broker_url) as raw,
    ):
        failing = 8  # every attempt of the first two reply frames
        real = worker.transport.publish_reply

        async def flaky(reply_to: str, body: bytes) -> None:
            nonlocal failing
            if failing > 0:
                failing -= 1
                raise Unavailable("the broker is away")
            await real(reply_to, body)

        monkeypatch.setattr(worker.transport, "publish_reply", flaky)
        inbox = await raw.open_inbox(frames.append)
        ids = [f"r{i}" for i in range(6)]
        for i, rid in enumerate(ids):
            body = wire.encode_requests([_request(rid, unique_model, float(i))], inbox)
            await raw.publish_request(unique_model, Priority.ONLINE, body)
        assert await wait_until(lambda: set(_replies(frames)) == set(ids), 60), _replies(frames)
        assert failing == 0
        assert await _settled(raw, unique_model), "every message acked: nothing held"
        assert worker.state == "ready"
    got = _replies(frames)
    for i, rid in enumerate(ids):
        np.testing.assert_array_equal(got[rid].arrays()["y"], [[2.0 * i] * 2])


# --------------------------------------------------------------------------- malformed items


@pytest.mark.memory
async def test_every_item_of_a_frame_is_answered_when_some_fail_unexpectedly(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=5))
    url = f"memory://{unique_model}"
    real = DoublingRuntime.validate

    def validate(self: DoublingRuntime, inputs: tuple[Tensor, ...]) -> tuple[Feeds, int]:
        value = float(inputs[0].to_numpy()[0, 0])
        if value == -1:
            raise ValueError("cannot reshape array of size 3 into shape (1,2)")
        if value == -2:
            raise RuntimeError("the runtime broke")
        return real(self, inputs)

    monkeypatch.setattr(DoublingRuntime, "validate", validate)
    bad_bytes = Request(
        id="bytes",
        model=unique_model,
        inputs=(Tensor(name="x", datatype=DataType.BYTES, shape=(3,), data=b"\x05\0\0\0ab"),),
        deadline=time.time() + 60,
    )
    frames: list[bytes] = []
    try:
        async with running_worker(url, root) as worker, connect(url) as raw:
            inbox = await raw.open_inbox(frames.append)
            items = [
                _request("a", unique_model, 1.0),
                _request("value-error", unique_model, -1.0),
                bad_bytes,
                _request("runtime-error", unique_model, -2.0),
                _request("b", unique_model, 3.0),
            ]
            await raw.publish_request(
                unique_model, Priority.ONLINE, wire.encode_requests(items, inbox)
            )
            assert await wait_until(lambda: len(_replies(frames)) == 5, 10), _replies(frames)
            assert await _settled(raw, unique_model, 10), "the message was settled"
            assert worker.state == "ready"
    finally:
        MemoryBroker.reset(unique_model)
    got = _replies(frames)
    np.testing.assert_array_equal(got["a"].arrays()["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(got["b"].arrays()["y"], [[6.0, 6.0]])
    assert _code(got["value-error"]) == ErrorCode.INVALID_ARGUMENT
    assert _code(got["bytes"]) == ErrorCode.INVALID_ARGUMENT
    assert _code(got["runtime-error"]) == ErrorCode.INTERNAL


# --------------------------------------------------------------------------- reply size


@pytest.mark.memory
async def test_reply_frames_are_split_to_fit_and_an_oversize_reply_becomes_an_error(
    tmp_path: Path, wide_doubling: RuntimeSpec, unique_model: str
) -> None:
    config = 'runtime = "wide-doubling"\nmax_batch_size = 4\nmax_wait_ms = 200\n'
    root = doubling_repo(tmp_path, unique_model, config)
    limit = 2048
    url = f"memory://{unique_model}"
    frames: list[bytes] = []
    try:
        async with (
            running_worker(f"{url}?max_message_bytes={limit}", root),
            connect(url) as raw,
        ):
            inbox = await raw.open_inbox(frames.append)
            items = [_request(r, unique_model, 1.0, width=160) for r in ("a", "b", "c")]
            items.append(_request("huge", unique_model, 1.0, width=1000))
            assert len(wire.encode_replies([_reply_like(i) for i in items[:3]])) > limit
            await raw.publish_request(
                unique_model, Priority.ONLINE, wire.encode_requests(items, inbox)
            )
            assert await wait_until(lambda: len(_replies(frames)) == 4, 10), _replies(frames)
            assert await _settled(raw, unique_model, 10)
    finally:
        MemoryBroker.reset(unique_model)
    assert all(len(f) <= limit for f in frames), [len(f) for f in frames]
    assert len(frames) >= 2
    got = _replies(frames)
    for rid in ("a", "b", "c"):
        np.testing.assert_array_equal(got[rid].arrays()["y"], np.full((1, 160), 2.0))
    assert _code(got["huge"]) == ErrorCode.INVALID_ARGUMENT  # LimitExceeded
    assert got["huge"].error is not None and "bytes" in got["huge"].error.message


def _reply_like(req: Request) -> Reply:
    """A reply as large as the one ``req`` gets from the doubling runtime."""
    return Reply(id=req.id, model=req.model, version="1", outputs=(req.inputs[0],))


# --------------------------------------------------------------------------- reply address


@pytest.mark.memory
@pytest.mark.parametrize("target", ["online", "heartbeats"])
async def test_a_request_naming_no_reply_address_is_dead_lettered_and_nothing_is_written(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, target: str
) -> None:
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=5))
    url = f"memory://{unique_model}"
    address = queue_name(unique_model, Priority.ONLINE) if target == "online" else HEARTBEATS
    beats: list[bytes] = []
    try:
        async with running_worker(url, root) as worker, connect(url) as raw:
            await raw.subscribe_heartbeats(beats.append)
            await raw.take_dead_letters(10_000)
            body = wire.encode_requests([_request("x", unique_model, 1.0)], address)
            await raw.publish_request(unique_model, Priority.ONLINE, body)
            dead: list[bytes] = []

            async def poll() -> bool:
                dead.extend(await raw.take_dead_letters())
                return bool(dead)

            deadline = time.monotonic() + 10
            while not await poll() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert dead == [body]
            assert await _settled(raw, unique_model, 10), "nothing was written to the queue"
            assert worker.stats.answered_total == 0
    finally:
        MemoryBroker.reset(unique_model)
    assert not [b for b in beats if b.startswith(wire.MAGIC)], "no reply frame as a heartbeat"


# --------------------------------------------------------------------------- redeliveries


@pytest.mark.memory
async def test_a_delivery_limit_of_one_still_serves_the_first_delivery(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str
) -> None:
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=5))
    url = f"memory://{unique_model}?delivery_limit=1"
    try:
        async with running_worker(url, root), Client(url, timeout=10) as client:
            out = await client.infer(unique_model, {"x": np.ones((1, 2), np.float32)})
    finally:
        MemoryBroker.reset(unique_model)
    np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])


MARK = -7.0


@pytest.mark.memory
async def test_a_request_that_crashes_workers_is_isolated_from_its_frame_mates(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker that runs the marked request dies (its run never returns, the
    worker aborts, and a new worker replaces it; three serve at a time). Its
    frame-mates are answered; it alone is dead-lettered."""
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=100) + THREADED)
    url = f"memory://{unique_model}"
    release = threading.Event()
    workers: list[Worker] = []
    loop = asyncio.get_running_loop()
    real_run = DoublingRuntime.run
    crashes: list[asyncio.Task[None]] = []

    async def crash(runtime: DoublingRuntime) -> None:
        (victim,) = [w for w in workers if runtime in w.table.runtimes[unique_model].values()]
        await victim.abort()
        if len(workers) < 12:
            await start_worker()

    def run(self: DoublingRuntime, feeds: Mapping[str, Array]) -> Feeds:
        if (np.asarray(feeds["x"]) == MARK).any():
            loop.call_soon_threadsafe(lambda: crashes.append(loop.create_task(crash(self))))
            release.wait(30)
            raise RuntimeError("crashed")
        return real_run(self, feeds)

    async def start_worker() -> None:
        settings = WorkerSettings(
            broker=url, models=root, worker_id=f"w{len(workers)}", http_port=None
        )
        w = Worker(settings)
        workers.append(w)
        await w.start()

    monkeypatch.setattr(DoublingRuntime, "run", run)
    frames: list[bytes] = []
    try:
        for _ in range(3):
            await start_worker()
        async with connect(url) as raw:
            inbox = await raw.open_inbox(frames.append)
            items = [
                _request("g1", unique_model, 1.0),
                _request("poison", unique_model, MARK),
                _request("g2", unique_model, 2.0),
            ]
            await raw.publish_request(
                unique_model, Priority.ONLINE, wire.encode_requests(items, inbox)
            )
            assert await wait_until(lambda: {"g1", "g2"} <= set(_replies(frames)), 30), (
                f"frame-mates unanswered after {len(workers)} workers"
            )
            dead: list[bytes] = []
            deadline = time.monotonic() + 30
            while not dead and time.monotonic() < deadline:
                dead += await raw.take_dead_letters()
                await asyncio.sleep(0.05)
            assert [[i.id for i in wire.decode_requests(d).items] for d in dead] == [["poison"]]
    finally:
        release.set()
        await asyncio.gather(*crashes, return_exceptions=True)
        for w in workers:
            if w.state != "stopped":
                await w.stop()
        MemoryBroker.reset(unique_model)
    got = _replies(frames)
    np.testing.assert_array_equal(got["g1"].arrays()["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(got["g2"].arrays()["y"], [[4.0, 4.0]])
    assert "poison" not in got or got["poison"].error is not None


# --------------------------------------------------------------------------- held work


@pytest.mark.memory
@pytest.mark.parametrize("bound_by", ["requests", "bytes"])
async def test_a_worker_holds_no_more_than_its_bound_and_leaves_the_rest_to_others(
    tmp_path: Path,
    doubling: RuntimeSpec,
    unique_model: str,
    monkeypatch: pytest.MonkeyPatch,
    bound_by: str,
) -> None:
    """Six messages of four requests, each message ~1.3 kB; the bound is eight
    requests or 2 kB: two messages."""
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=1) + THREADED)
    url = f"memory://{unique_model}"
    release = threading.Event()
    real_run = DoublingRuntime.run

    def run(self: DoublingRuntime, feeds: Mapping[str, Array]) -> Feeds:
        release.wait(30)  # nothing finishes until the test says so
        return real_run(self, feeds)

    monkeypatch.setattr(DoublingRuntime, "run", run)
    bound = 8
    limits = (
        {"max_held_requests": bound}
        if bound_by == "requests"
        else {"max_held_requests": 1000, "max_held_bytes": 2048}
    )
    frames: list[bytes] = []
    try:
        async with (
            running_worker(url, root, worker_id="first", **limits) as first,
            connect(url) as raw,
        ):
            inbox = await raw.open_inbox(frames.append)
            ids = [f"m{m}r{r}".ljust(300, "-") for m in range(6) for r in range(4)]
            for m in range(6):  # six messages of four requests: 24 > bound
                reqs = [_request(i, unique_model, 1.0) for i in ids[4 * m : 4 * m + 4]]
                await raw.publish_request(
                    unique_model, Priority.ONLINE, wire.encode_requests(reqs, inbox)
                )
            depth = await raw.depth(unique_model)
            assert depth.ready + (depth.in_flight or 0) == 6
            assert first.in_flight() <= bound, "held more than its bound"
            assert depth.ready >= 4, "the rest stays in the broker"
            async with running_worker(url, root, worker_id="second") as second:
                assert await wait_until(lambda: second.in_flight() > 0, 10), "second got work"
                assert first.in_flight() <= bound
                release.set()
                assert await wait_until(lambda: set(_replies(frames)) == set(ids), 30)
                assert second.stats.answered_total > 0
            assert await _settled(raw, unique_model, 10)
            # what is held is counted as it changes: back to nothing once all is answered
            for w in (first, second):
                ingress = w._ingress
                assert ingress is not None and ingress.held() == (0, 0)
    finally:
        release.set()
        MemoryBroker.reset(unique_model)


@pytest.mark.memory
async def test_a_pause_decided_before_its_turn_does_not_stall_a_worker(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consuming again takes a broker round trip per lane, under the hold's
    lock. Work that arrives meanwhile reaches the bound and asks to pause;
    if that work is all answered before the lock is free, a pause decided on
    what was held before waiting leaves the worker paused with nothing held,
    and nothing would ever resume it (at saturation every request then timed
    out). The interleaving, step by step: resume under way, the bound
    reached, everything settled, then the resume's round trip ends."""
    root = doubling_repo(tmp_path, unique_model, DOUBLING_CONFIG.format(wait=1))
    url = f"memory://{unique_model}"
    real_resume = _MemoryConsumer.resume
    round_trip = asyncio.Event()

    async def slow_resume(self: _MemoryConsumer) -> None:
        await round_trip.wait()
        await real_resume(self)

    try:
        async with running_worker(url, root, max_held_requests=4) as worker:
            ingress = worker._ingress
            assert ingress is not None
            ingress._held_requests = 4  # the bound: paused
            await ingress._check_hold()
            assert ingress.paused
            monkeypatch.setattr(_MemoryConsumer, "resume", slow_resume)
            ingress._held_requests = 0  # all settled: consuming again...
            resuming = asyncio.create_task(ingress._check_hold())
            await asyncio.sleep(0.05)
            ingress._held_requests = 4  # ...work delivered meanwhile reaches the bound
            pausing = asyncio.create_task(ingress._check_hold())
            await asyncio.sleep(0.05)
            ingress._held_requests = 0  # and is answered and settled
            settled = asyncio.create_task(ingress._check_hold())
            await asyncio.sleep(0.05)
            round_trip.set()
            await asyncio.gather(resuming, pausing, settled)
            assert not ingress.paused, "paused with nothing held: nothing would resume it"
    finally:
        round_trip.set()
        MemoryBroker.reset(unique_model)


# --------------------------------------------------------------------------- parameters


@pytest.mark.memory
async def test_parameters_a_model_does_not_take_are_refused_by_name(
    tmp_path: Path, doubling: RuntimeSpec, wide_doubling: RuntimeSpec, unique_model: str
) -> None:
    plain, wide = f"{unique_model}-plain", f"{unique_model}-wide"
    doubling_repo(tmp_path, plain, DOUBLING_CONFIG.format(wait=1))
    doubling_repo(tmp_path, wide, 'runtime = "wide-doubling"\nmax_batch_size = 4\n')
    url = f"memory://{unique_model}"
    x = {"x": np.ones((1, 2), np.float32)}
    try:
        async with running_worker(url, tmp_path), Client(url, timeout=10) as client:
            with pytest.raises(InvalidArgument, match="temprature"):
                await client.infer(plain, x, parameters={"temprature": 0.5})
            with pytest.raises(InvalidArgument, match="sclae"):
                await client.infer(wide, x, parameters={"scale": 2, "sclae": 1})
            out = await client.infer(wide, x, parameters={"scale": 2})
            np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])
            out = await client.infer(plain, x)
            np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])
    finally:
        MemoryBroker.reset(unique_model)
    assert len(loaded) == 2
