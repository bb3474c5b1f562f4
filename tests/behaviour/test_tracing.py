"""OpenTelemetry tracing through a real broker: one trace from the caller's
span through the worker and back, with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleet import tracing, wire
from fleet.contract import Priority
from fleet.errors import ModelNotFound
from fleet.transport import Delivery, connect
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import rows, running_worker


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield provider, exporter
    finally:
        tracing.disable()
        provider.shutdown()


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_from_the_caller_through_the_worker_and_back(
    broker_url: str,
    model_repo: Path,
    unique_model: str,
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    digits = f"{unique_model}-digits"
    app = provider.get_tracer("app")
    async with running_worker(broker_url, model_repo), Client(broker_url, timeout=20) as client:
        with app.start_as_current_span("caller"):
            reply = await client.infer_reply(digits, {"input": rows(64, 1)})
        assert reply.ok
        # the worker records its spans once its publish returned: maybe after the client has it
        assert await wait_until(
            lambda: any(s.name == "fleet.reply" for s in exporter.get_finished_spans()), 10
        )
    spans = list(exporter.get_finished_spans())
    caller = _one(spans, "caller")
    call = _one(spans, f"fleet.infer {digits}")
    worker = _one(spans, f"fleet.worker {digits}")
    assert {s.context.trace_id for s in spans} == {caller.context.trace_id}
    assert _parent_id(call) == caller.context.span_id
    assert _parent_id(worker) == call.context.span_id
    for stage in ("fleet.coalesce", "fleet.decode"):
        assert _parent_id(_one(spans, stage)) == call.context.span_id
    for stage in ("fleet.batch_wait", "fleet.inference", "fleet.reply"):
        assert _parent_id(_one(spans, stage)) == worker.context.span_id
    inference = _one(spans, "fleet.inference")
    assert inference.attributes is not None and inference.attributes["fleet.batch_size"] == 1
    assert worker.attributes is not None and worker.attributes["fleet.worker"] == "w1"


async def test_a_failed_call_ends_its_span_with_the_error(
    broker_url: str, model_repo: Path, traced: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = traced
    async with running_worker(broker_url, model_repo), Client(broker_url, timeout=20) as client:
        with pytest.raises(ModelNotFound):
            await client.infer_reply("no-such-model", {"input": rows(64, 1)})
    call = _one(list(exporter.get_finished_spans()), "fleet.infer no-such-model")
    assert call.status.description is not None and "ModelNotFound" in call.status.description


@pytest.mark.memory
async def test_untraced_requests_keep_the_frame_version_every_worker_reads(
    unique_model: str,
) -> None:
    """With tracing off, request frames stay at version 2, which workers of
    earlier builds read; with it on they carry the trace context (version 3)."""
    url = f"memory://{unique_model}"
    frames: list[bytes] = []
    got = asyncio.Event()

    async def keep(delivery: Delivery) -> None:
        frames.append(bytes(delivery.body))
        await delivery.ack()
        got.set()

    async with connect(url) as worker_side, Client(url, timeout=0.2) as client:
        await worker_side.declare_model(unique_model)
        await worker_side.consume(unique_model, Priority.ONLINE, keep, prefetch=8)
        for traced_now in (False, True):
            got.clear()
            if traced_now:
                provider = TracerProvider()
                tracing.enable(provider)
            try:
                with pytest.raises(Exception):  # noqa: B017 - nobody answers
                    await client.infer(unique_model, {"input": rows(64, 1)})
            finally:
                tracing.disable()
            await asyncio.wait_for(got.wait(), 5)
    assert [f[4] for f in frames] == [wire.VERSION, wire.HEADERS_VERSION]
    untraced, traced_frame = (wire.decode_requests(f).items[0] for f in frames)
    assert untraced.headers == {}  # type: ignore[union-attr]
    assert "traceparent" in traced_frame.headers  # type: ignore[union-attr]
