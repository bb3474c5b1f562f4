"""The client on every broker: size limits, re-sends, cancellation, backpressure.

Publishing is observed (and, for some faults, replaced) on the client's own
transport; replies for requests no worker computes are published through a
second connection, as a worker would.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import ErrorInfo, Priority, Reply, Request
from fleet.errors import (
    DeadlineExceeded,
    InvalidArgument,
    LimitExceeded,
    Overloaded,
)
from fleet.tensor import Tensor
from fleet.transport import Transport, connect
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import rows, running_worker

Publish = Callable[[str, Priority, bytes], Awaitable[None]]


def _with(url: str, **options: object) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in options.items())


def _ids(frame: bytes) -> list[str]:
    return [i.id for i in wire.decode_requests(frame).items]


def _observe(client: Client, wrap: Callable[[Publish], Publish] | None = None) -> list[bytes]:
    """Record every frame the client publishes (through ``wrap`` when given)."""
    sent: list[bytes] = []
    real: Publish = client.transport.publish_request

    async def publish(model: str, priority: Priority, frame: bytes) -> None:
        sent.append(frame)
        await (wrap(real) if wrap else real)(model, priority, frame)

    client.transport.publish_request = publish  # type: ignore[method-assign,assignment]
    return sent


@asynccontextmanager
async def _declared(url: str, model: str) -> AsyncIterator[Transport]:
    async with connect(url) as admin:
        await admin.declare_model(model)
        yield admin


async def _reply(raw: Transport, client: Client, rid: str, model: str) -> None:
    out = Tensor.from_numpy("y", np.array([7], np.int64))
    await raw.publish_reply(
        client._reply_to, wire.encode_replies([Reply(id=rid, model=model, outputs=(out,))])
    )


# --------------------------------------------------------------------- sizes


async def test_oversize_request_fails_at_once_and_does_not_block_its_lane(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    url = _with(broker_url, max_message_bytes=16_000)
    async with running_worker(broker_url, model_repo), Client(url, timeout=20) as client:
        assert client.max_message_bytes <= 16_000
        sent = _observe(client)
        t0 = time.monotonic()
        big = client.infer(digits, {"input": rows(64, 100)})  # 25 600 bytes of input
        small = [client.infer(digits, {"input": rows(64, 1, seed=i)}) for i in range(30)]
        results = await asyncio.gather(big, *small, return_exceptions=True)
        assert isinstance(results[0], LimitExceeded) and not results[0].retriable
        assert all(isinstance(r, dict) for r in results[1:]), results[1:]
        assert time.monotonic() - t0 < 10
    assert sent and max(len(f) for f in sent) <= 16_000


async def test_coalesced_messages_stay_under_the_broker_limit(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    url = _with(broker_url, max_message_bytes=3_000)
    async with running_worker(broker_url, model_repo), Client(url, timeout=20) as client:
        sent = _observe(client)
        x = rows(64, 200)
        replies = await asyncio.gather(
            *(client.infer_reply(digits, {"input": x[i : i + 2]}) for i in range(0, 200, 2))
        )
    assert all(r.ok for r in replies)
    assert max(len(f) for f in sent) <= 3_000
    assert sum(len(_ids(f)) for f in sent) >= 100 > len(sent)  # still coalesced


async def test_a_non_retriable_publish_error_fails_its_requests_at_once(
    broker_url: str, unique_model: str
) -> None:
    async with _declared(broker_url, unique_model), Client(broker_url, timeout=30) as client:

        async def too_big(model: str, priority: Priority, frame: bytes) -> None:
            raise LimitExceeded("the broker refused the message size")

        client.transport.publish_request = too_big  # type: ignore[method-assign,assignment]
        t0 = time.monotonic()
        with pytest.raises(LimitExceeded):
            await client.infer(unique_model, {"input": rows(64, 1)})
        assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------- re-sends


async def test_a_resend_refused_as_overloaded_still_gets_the_original_reply(
    broker_url: str, unique_model: str
) -> None:
    """The original was published (and is being computed); the re-send after a
    reconnect finds the queue full. The caller must still get the reply."""
    async with (
        _declared(broker_url, unique_model) as raw,
        Client(broker_url, timeout=30) as client,
    ):
        calls: list[bytes] = []

        async def publish(model: str, priority: Priority, frame: bytes) -> None:
            calls.append(frame)
            if len(calls) > 1:
                raise Overloaded("queue full")

        client.transport.publish_request = publish  # type: ignore[method-assign,assignment]
        call = asyncio.ensure_future(client.infer_reply(unique_model, {"input": rows(64, 1)}))
        await wait_until(lambda: len(calls) == 1, timeout=10)
        (rid,) = _ids(calls[0])
        await client._resend_unanswered()  # what a reconnect does
        await wait_until(lambda: len(calls) == 2, timeout=10)
        await asyncio.sleep(0.1)  # the refusal has been handled
        assert not call.done()
        await _reply(raw, client, rid, unique_model)
        reply = await asyncio.wait_for(call, 20)
    assert reply.ok and reply.id == rid


async def test_an_overloaded_reply_to_a_resend_does_not_end_the_wait(
    broker_url: str, unique_model: str
) -> None:
    async with (
        _declared(broker_url, unique_model) as raw,
        Client(broker_url, timeout=30) as client,
    ):
        sent = _observe(client)
        call = asyncio.ensure_future(client.infer_reply(unique_model, {"input": rows(64, 1)}))
        await wait_until(lambda: len(sent) == 1, timeout=10)
        (rid,) = _ids(sent[0])
        await client._resend_unanswered()
        await wait_until(lambda: len(sent) == 2, timeout=10)
        full = Reply(id=rid, model=unique_model, error=ErrorInfo.of(Overloaded("queue full")))
        await raw.publish_reply(client._reply_to, wire.encode_replies([full]))
        await asyncio.sleep(0.2)
        assert not call.done()
        await _reply(raw, client, rid, unique_model)
        reply = await asyncio.wait_for(call, 20)
    assert reply.ok


async def test_a_refused_resend_without_a_reply_ends_in_a_typed_error_at_the_deadline(
    broker_url: str, unique_model: str
) -> None:
    async with _declared(broker_url, unique_model), Client(broker_url, timeout=1.0) as client:
        calls: list[bytes] = []

        async def publish(model: str, priority: Priority, frame: bytes) -> None:
            calls.append(frame)
            if len(calls) > 1:
                raise Overloaded("queue full")

        client.transport.publish_request = publish  # type: ignore[method-assign,assignment]
        call = asyncio.ensure_future(client.infer(unique_model, {"input": rows(64, 1)}))
        await wait_until(lambda: len(calls) == 1, timeout=10)
        await client._resend_unanswered()
        with pytest.raises(Overloaded, match="no reply"):
            await asyncio.wait_for(call, 20)


# --------------------------------------------------------------------- cancellation


async def test_a_request_cancelled_before_publishing_is_never_published(
    broker_url: str, unique_model: str
) -> None:
    async with (
        _declared(broker_url, unique_model) as raw,
        Client(broker_url, timeout=30, max_publishes=1) as client,
    ):
        gate = asyncio.Event()

        def held(real: Publish) -> Publish:
            async def publish(model: str, priority: Priority, frame: bytes) -> None:
                await gate.wait()
                await real(model, priority, frame)

            return publish

        sent = _observe(client, held)
        first = asyncio.ensure_future(client.infer_reply(unique_model, {"input": rows(64, 1)}))
        await wait_until(lambda: len(sent) == 1, timeout=10)  # the lane is busy with it
        doomed = asyncio.ensure_future(
            client.infer_reply(unique_model, {"input": rows(64, 1)}, request_id="doomed")
        )
        await wait_until(lambda: client.in_flight == 2, timeout=10)  # queued behind it
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        later = asyncio.ensure_future(
            client.infer_reply(unique_model, {"input": rows(64, 1)}, request_id="later")
        )
        await asyncio.sleep(0)
        gate.set()
        await wait_until(lambda: any("later" in _ids(f) for f in sent), timeout=10)
        assert not any("doomed" in _ids(f) for f in sent)
        for rid in (_ids(sent[0])[0], "later"):
            await _reply(raw, client, rid, unique_model)
        assert (await asyncio.wait_for(first, 20)).ok
        assert (await asyncio.wait_for(later, 20)).ok
        assert client.in_flight == 0


async def test_a_request_cancelled_after_publishing_is_forgotten(
    broker_url: str, unique_model: str
) -> None:
    async with (
        _declared(broker_url, unique_model) as raw,
        Client(broker_url, timeout=30) as client,
    ):
        sent = _observe(client)
        call = asyncio.ensure_future(
            client.infer_reply(unique_model, {"input": rows(64, 1)}, request_id="gone")
        )
        await wait_until(lambda: len(sent) == 1 and client.stats.published == 1, timeout=10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert client.in_flight == 0
        dropped = client.stats.duplicates_dropped
        await _reply(raw, client, "gone", unique_model)
        await wait_until(lambda: client.stats.duplicates_dropped > dropped, timeout=10)
        assert client.stats.failed == 0


# --------------------------------------------------------------------- backpressure


async def test_waiting_for_capacity_serves_far_more_than_max_in_flight(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    peak = 0
    async with (
        running_worker(broker_url, model_repo),
        Client(broker_url, timeout=30, max_in_flight=8, wait_for_capacity=True) as client,
    ):

        def counting(real: Publish) -> Publish:
            async def publish(model: str, priority: Priority, frame: bytes) -> None:
                nonlocal peak
                peak = max(peak, client.in_flight)
                await real(model, priority, frame)

            return publish

        _observe(client, counting)
        x = rows(64, 200)
        replies = await asyncio.gather(
            *(client.infer_reply(digits, {"input": x[i : i + 1]}) for i in range(200))
        )
    assert all(r.ok for r in replies)
    assert 0 < peak <= 8


async def test_without_waiting_past_max_in_flight_is_overloaded_at_once(
    broker_url: str, unique_model: str
) -> None:
    async with (
        _declared(broker_url, unique_model),
        Client(broker_url, timeout=0.5, max_in_flight=2) as client,
    ):
        results = await asyncio.gather(
            *(client.infer(unique_model, {"input": rows(64, 1)}) for _ in range(5)),
            return_exceptions=True,
        )
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["DeadlineExceeded"] * 2 + ["Overloaded"] * 3


async def test_waiting_for_capacity_is_bounded_by_the_deadline(
    broker_url: str, unique_model: str
) -> None:
    async with (
        _declared(broker_url, unique_model),
        Client(broker_url, timeout=0.5, max_in_flight=1, wait_for_capacity=True) as client,
    ):
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(client.infer(unique_model, {"input": rows(64, 1)}) for _ in range(3)),
            return_exceptions=True,
        )
        assert time.monotonic() - t0 < 5
        assert all(isinstance(r, DeadlineExceeded) for r in results), results
        assert client.in_flight == 0


async def test_max_bytes_in_flight_bounds_the_bytes_awaiting_replies(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    one = len(b"".join(wire.encode_request_body(_probe(digits))))
    limit = one * 3 + one // 2  # three requests fit, a fourth does not
    peak = 0
    async with (
        running_worker(broker_url, model_repo),
        Client(broker_url, timeout=30, max_bytes_in_flight=limit, wait_for_capacity=True) as c,
    ):

        def counting(real: Publish) -> Publish:
            async def publish(model: str, priority: Priority, frame: bytes) -> None:
                nonlocal peak
                peak = max(peak, c.in_flight)
                await real(model, priority, frame)

            return publish

        _observe(c, counting)
        x = rows(64, 40)
        replies = await asyncio.gather(
            *(c.infer_reply(digits, {"input": x[i : i + 1]}) for i in range(40))
        )
        with pytest.raises(LimitExceeded, match="max_bytes_in_flight"):
            await c.infer(digits, {"input": rows(64, 8)})
    assert all(r.ok for r in replies)
    assert 0 < peak <= 3


def _probe(model: str) -> Request:
    x = Tensor.from_numpy("input", rows(64, 1))
    return Request(id="0" * 32, model=model, inputs=(x,), deadline=0.0, timeout=0.0)


async def test_opt_in_retries_ride_out_a_retriable_refusal(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    refusals = 0

    def flaky(real: Publish) -> Publish:
        async def publish(model: str, priority: Priority, frame: bytes) -> None:
            nonlocal refusals
            if refusals < 2:
                refusals += 1
                raise Overloaded("queue full")
            await real(model, priority, frame)

        return publish

    async with running_worker(broker_url, model_repo):
        async with Client(broker_url, timeout=20) as plain:
            _observe(plain, flaky)
            with pytest.raises(Overloaded):
                await plain.infer(digits, {"input": rows(64, 1)})
        refusals = 0
        async with Client(broker_url, timeout=20, retries=3) as client:
            _observe(client, flaky)
            out = await client.infer(digits, {"input": rows(64, 1)})
    assert out["label"].shape == (1,)
    assert refusals == 2


# --------------------------------------------------------------------- arguments


@pytest.mark.memory
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 0.0])
async def test_timeouts_that_are_not_finite_and_positive_are_invalid(bad: float) -> None:
    with pytest.raises(InvalidArgument):
        Client("memory://bad-timeouts", timeout=bad)
    async with Client("memory://bad-timeouts") as client:
        with pytest.raises(InvalidArgument):
            await client.infer("m", {"input": rows(64, 1)}, timeout=bad)
        assert client.in_flight == 0
