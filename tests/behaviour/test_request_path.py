"""The request path end to end: client → broker → worker → client.

One suite, run against every broker (memory, RabbitMQ, Kafka) through the
``broker_url`` fixture.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import ErrorInfo, Priority, Reply, Request
from fleet.errors import (
    DeadlineExceeded,
    DecodeError,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    Overloaded,
)
from fleet.tensor import Tensor
from fleet.transport import connect
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import direct_onnx, rows, running_worker


async def test_outputs_equal_direct_onnx_runtime(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits, mlp = f"{unique_model}-digits", f"{unique_model}-mlp"
    x64, x256 = rows(64, 5), rows(256, 3, seed=1)
    async with running_worker(broker_url, model_repo), Client(broker_url, timeout=10) as client:
        got_digits = await client.infer(digits, {"input": x64})
        got_mlp = await client.infer(mlp, {"input": x256})
        one_by_one = await asyncio.gather(
            *(client.infer(digits, {"input": x64[i : i + 1]}) for i in range(5))
        )
    want_digits = direct_onnx(model_repo / digits, {"input": x64})
    want_mlp = direct_onnx(model_repo / mlp, {"input": x256})
    assert set(got_digits) == set(want_digits)
    np.testing.assert_array_equal(got_digits["label"], want_digits["label"])
    # batched and padded differently, FP32 sums come out in another order: a
    # relative tolerance for the probabilities, an absolute one for those near 0
    np.testing.assert_allclose(
        got_digits["probabilities"], want_digits["probabilities"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(got_mlp["logits"], want_mlp["logits"], rtol=1e-4, atol=1e-5)
    # batched with other requests or alone, a row's answer is the same
    labels = np.concatenate([r["label"] for r in one_by_one])
    np.testing.assert_array_equal(labels, want_digits["label"])


async def test_concurrent_requests_are_coalesced_and_batched(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 400)
    async with running_worker(broker_url, model_repo), Client(broker_url, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.infer_reply(digits, {"input": x[i : i + 1]}) for i in range(400))
        )
    assert all(r.ok for r in replies)
    assert len({r.id for r in replies}) == 400
    assert client.stats.messages < client.stats.published == 400  # several per message
    assert max(r.timings.batch_size for r in replies) > 1  # the worker batched
    assert all(r.timings.worker_id == "w1" for r in replies)


async def test_unknown_model_fails_fast(broker_url: str, model_repo: Path) -> None:
    async with running_worker(broker_url, model_repo), Client(broker_url) as client:
        t0 = time.perf_counter()
        with pytest.raises(ModelNotFound):
            await client.infer("no-such-model", {"input": rows(64, 1)}, timeout=60)
        assert time.perf_counter() - t0 < 30  # told, not timed out


async def test_unknown_version_is_model_not_found(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    async with running_worker(broker_url, model_repo), Client(broker_url) as client:
        with pytest.raises(ModelNotFound, match="version"):
            await client.infer(f"{unique_model}-digits", {"input": rows(64, 1)}, version="99")


@pytest.mark.faults
async def test_poison_inputs_get_typed_errors_and_neighbours_succeed(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    good = rows(64, 1)
    poison = {
        "wrong dtype": ({"input": good.astype(np.int64)}, InvalidArgument, "FP32"),
        "wrong shape": ({"input": rows(64, 1)[:, :63]}, InvalidArgument, "shape"),
        "unknown input": ({"nope": good}, InvalidArgument, "input"),
    }
    async with running_worker(broker_url, model_repo) as worker, Client(broker_url) as client:
        t0 = time.perf_counter()
        goods = [client.infer(digits, {"input": good}, timeout=60) for _ in range(8)]
        bads = [client.infer(digits, inputs, timeout=60) for inputs, _, _ in poison.values()]
        results = await asyncio.gather(*goods, *bads, return_exceptions=True)
        assert time.perf_counter() - t0 < 30  # answered, well before the 60 s timeout
        for r in results[:8]:
            assert isinstance(r, dict), r
        for r, (name, (_, kind, text)) in zip(results[8:], poison.items(), strict=True):
            assert isinstance(r, kind), (name, r)
            assert text in str(r), (name, r)
        # the worker keeps serving
        assert (await client.infer(digits, {"input": good}))["label"].shape == (1,)
        assert worker.state == "ready"


@pytest.mark.shares("dead-letters")
@pytest.mark.faults
async def test_undecodable_messages_go_to_the_dead_letter_queue(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    async with (
        running_worker(broker_url, model_repo, max_message_bytes=64 * 1024),
        Client(broker_url, timeout=60) as client,
        connect(broker_url) as raw,
    ):
        await raw.take_dead_letters(10_000)  # start from an empty queue
        garbage = b"\x00garbage, not a fleet message"
        await raw.publish_request(digits, Priority.ONLINE, garbage)
        # an oversize message: its caller is still told at once
        t0 = time.perf_counter()
        with pytest.raises(InvalidArgument, match="over the limit"):
            await client.infer(digits, {"input": rows(64, 300)})
        assert time.perf_counter() - t0 < 30  # told, well before the 60 s timeout
        assert (await client.infer(digits, {"input": rows(64, 1)}))["label"].shape == (1,)
        dead: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(dead) < 2 and time.monotonic() < deadline:
            dead += await raw.take_dead_letters()
            await asyncio.sleep(0.1)
    assert garbage in dead
    assert len(dead) == 2


async def test_client_refuses_a_request_over_its_own_size_limit(broker_url: str) -> None:
    async with Client(broker_url, max_message_bytes=1024) as client:
        with pytest.raises(LimitExceeded):
            await client.infer("any", {"input": rows(64, 10)})
        with pytest.raises(InvalidArgument, match="model name"):
            await client.infer("bad name!", {"input": rows(64, 1)})


@pytest.mark.faults
async def test_expired_requests_are_not_computed(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    async with running_worker(broker_url, model_repo) as worker, connect(broker_url) as raw:
        got: list[bytes] = []
        inbox = await raw.open_inbox(got.append)
        now = time.time()
        expired = Request(
            id="late",
            model=digits,
            inputs=(Tensor.from_numpy("input", rows(64, 1)),),
            deadline=now - 1,
            sent_at=now - 2,
        )
        live = Request(
            id="fresh",
            model=digits,
            inputs=(Tensor.from_numpy("input", rows(64, 1)),),
            deadline=now + 10,
            sent_at=now,
        )
        await raw.publish_request(
            digits, Priority.ONLINE, wire.encode_requests([expired, live], inbox)
        )
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    ids = [i.id for blob in got for i in wire.decode_replies(blob).items]
    assert ids == ["fresh"]
    assert worker.stats.expired_total == 1
    assert worker.stats.answered_total == 1


@pytest.mark.faults
async def test_a_full_queue_is_overloaded_at_once(broker_url: str, unique_model: str) -> None:
    sep = "&" if "?" in broker_url else "?"
    url = f"{broker_url}{sep}max_queue_length=5"  # Kafka: also its lag limit
    model = f"{unique_model}-digits"
    async with connect(url) as admin:
        await admin.declare_model(model)  # queues exist; nobody consumes
    # one request per message: the queue's limit counts broker messages
    async with Client(url, timeout=5, max_batch=1) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(client.infer(model, {"input": rows(64, 1)}, timeout=3) for _ in range(40)),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - t0
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    assert overloaded, results
    assert all(isinstance(r, Overloaded | DeadlineExceeded) for r in results)
    assert overloaded[0].retriable
    assert elapsed < 20  # each call ended by its 3 s deadline, none hung


async def test_duplicate_replies_are_dropped(broker_url: str, unique_model: str) -> None:
    async with Client(broker_url) as client, connect(broker_url) as raw:
        await raw.declare_model(unique_model)  # queued, never consumed
        task = asyncio.ensure_future(
            client.infer_reply(unique_model, {"input": rows(4, 1)}, request_id="dup", timeout=60)
        )
        while client.stats.published < 1:
            await asyncio.sleep(0.01)
        first = Reply(id="dup", model="m", error=ErrorInfo.of(InvalidArgument("first")))
        second = Reply(id="dup", model="m", error=ErrorInfo.of(InvalidArgument("second")))
        await raw.publish_reply(client._reply_to, wire.encode_replies([first, second]))
        got = await asyncio.wait_for(task, 30)  # answered at once; the bound only catches a hang
        assert got.error is not None and got.error.message == "first"
        await raw.publish_reply(client._reply_to, wire.encode_replies([second]))
        assert await wait_until(lambda: client.stats.duplicates_dropped >= 2, 30)
        await asyncio.sleep(0.1)  # and no more than the two
        assert client.stats.duplicates_dropped == 2
        assert client.stats.answered == 1


def test_decode_error_is_an_invalid_argument() -> None:
    assert issubclass(DecodeError, InvalidArgument)
