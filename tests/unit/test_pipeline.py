"""The pipeline with a fake model: isolation of bad items, expiry, output split, and
reply sinks that are not a broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from fleet.contract import Reply, Request
from fleet.errors import ErrorCode
from fleet.tensor import Tensor
from worker.pipeline import BatchStats, Item, Outcome, Pipeline, ReplySink

pytestmark = pytest.mark.unit


class FakeModel:
    """Doubles its input; any batch holding a negative value raises."""

    max_batch_size = 8

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        x = feeds["input"]
        self.batches.append(len(x))
        if (x < 0).any():
            raise RuntimeError("negative input")
        return {"output": x * 2}


class CollectingSink:
    """Keeps every outcome it is handed, one list per call."""

    def __init__(self) -> None:
        self.calls: list[list[Outcome]] = []

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        self.calls.append(list(outcomes))

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for call in self.calls for o in call]


class RequestSink:
    """One caller waiting on one request, as an HTTP or a gRPC ingress has them."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        (outcome,) = outcomes
        self.answer.set_result(outcome.reply)


def _item(
    i: int,
    value: float,
    *,
    deadline: float | None = None,
    rows: int = 1,
    sink: ReplySink | None = None,
) -> Item:
    x = np.full((rows, 2), value, np.float32)
    req = Request(
        id=f"r{i}",
        model="m",
        inputs=(Tensor.from_numpy("input", x),),
        deadline=deadline if deadline is not None else time.time() + 10,
        sent_at=time.time(),
    )
    return Item(request=req, feeds={"input": x}, rows=rows, sink=sink or CollectingSink())


def _pipeline(model: FakeModel, stats: list[BatchStats] | None = None) -> Pipeline:
    return Pipeline(
        model="m",
        version="1",
        runner=model,
        max_wait=0.01,
        worker_id="w",
        on_batch=(stats if stats is not None else []).append,
    )


async def _run(items: list[Item]) -> tuple[list[Outcome], FakeModel, list[BatchStats]]:
    """Run ``items`` as one batch; every outcome, whichever sink it went to."""
    stats: list[BatchStats] = []
    model = FakeModel()
    pipe = _pipeline(model, stats)
    for it in items:
        pipe.submit(it)
    pipe.start()
    await asyncio.wait_for(pipe.close(), 5)
    sinks = list({id(i.sink): i.sink for i in items}.values())
    out = [o for sink in sinks if isinstance(sink, CollectingSink) for o in sink.outcomes]
    return out, model, stats


async def test_a_bad_item_fails_alone() -> None:
    items = [_item(0, 1.0), _item(1, -1.0), _item(2, 3.0)]
    out, model, _ = await _run(items)
    by_id = {o.item.request.id: o.reply for o in out}
    assert by_id["r0"] is not None and by_id["r0"].ok
    np.testing.assert_array_equal(by_id["r0"].arrays()["output"], [[2.0, 2.0]])
    np.testing.assert_array_equal(by_id["r2"].arrays()["output"], [[6.0, 6.0]])  # type: ignore[union-attr]
    bad = by_id["r1"]
    assert bad is not None and bad.error is not None
    assert bad.error.code == ErrorCode.INTERNAL and "negative" in bad.error.message
    assert model.batches[0] == 3  # tried together first, then one by one
    assert sorted(model.batches[1:]) == [1, 1, 1]


async def test_expired_items_are_never_run() -> None:
    out, model, _ = await _run([_item(0, 1.0, deadline=time.time() - 1), _item(1, 1.0)])
    replies = {o.item.request.id: o.reply for o in out}
    assert replies["r0"] is None  # dropped without a reply
    assert model.batches == [1]


async def test_multi_row_requests_get_their_own_rows_back() -> None:
    items = [_item(0, 1.0, rows=3), _item(1, 5.0, rows=2)]
    out, model, stats = await _run(items)
    by_id = {o.item.request.id: o.reply for o in out}
    np.testing.assert_array_equal(by_id["r0"].arrays()["output"], np.full((3, 2), 2.0))  # type: ignore[union-attr]
    np.testing.assert_array_equal(by_id["r1"].arrays()["output"], np.full((2, 2), 10.0))  # type: ignore[union-attr]
    assert model.batches == [5]
    assert stats[0].rows == 5 and by_id["r0"].timings.batch_size == 5  # type: ignore[union-attr]


async def test_each_request_answered_through_its_own_sink() -> None:
    """Nothing of a broker: a caller per request, as an HTTP ingress would have."""
    model = FakeModel()
    pipe = _pipeline(model)
    pipe.start()
    sinks = [RequestSink() for _ in range(3)]
    for i, sink in enumerate(sinks):
        pipe.submit(_item(i, float(i), sink=sink))
    replies = await asyncio.wait_for(asyncio.gather(*(s.answer for s in sinks)), 5)
    await asyncio.wait_for(pipe.close(), 5)
    for i, reply in enumerate(replies):
        assert reply is not None and reply.ok and reply.id == f"r{i}"
        np.testing.assert_array_equal(reply.arrays()["output"], [[2.0 * i, 2.0 * i]])
    assert model.batches == [3]  # one batch, three sinks


async def test_a_batch_gives_each_sink_its_outcomes_in_one_call() -> None:
    a, b = CollectingSink(), CollectingSink()
    items = [_item(0, 1.0, sink=a), _item(1, 2.0, sink=b), _item(2, 3.0, sink=a)]
    expired = _item(3, 4.0, sink=b, deadline=time.time() - 1)
    _, model, _ = await _run([*items, expired])
    assert model.batches == [3]
    assert len(a.calls) == 1 and len(b.calls) == 1
    assert [o.item.request.id for o in a.calls[0]] == ["r0", "r2"]
    assert {o.item.request.id: o.reply is not None for o in b.calls[0]} == {"r1": True, "r3": False}


async def test_a_failing_sink_does_not_keep_replies_from_the_others() -> None:
    class BrokenSink:
        async def settle(self, outcomes: Sequence[Outcome]) -> None:
            raise RuntimeError("the connection went away")

    good = CollectingSink()
    _, model, _ = await _run([_item(0, 1.0, sink=BrokenSink()), _item(1, 1.0, sink=good)])
    assert model.batches == [2]
    assert [o.item.request.id for o in good.outcomes] == ["r1"]


class TimedModel(FakeModel):
    """Takes ``cost`` seconds of a clock of its own per run, and notes the thread it ran on."""

    def __init__(self, cost: float, loop_clock_step: float = 0.0) -> None:
        super().__init__()
        self.cost = cost
        self.now = 0.0
        self.threads: list[int] = []
        self.loop_thread = threading.get_ident()
        self.loop_clock_step = loop_clock_step  # time passing on the loop at each look

    def clock(self) -> float:
        if threading.get_ident() == self.loop_thread:
            self.now += self.loop_clock_step
        return self.now

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        self.now += self.cost
        return super().run(feeds)


async def _one_at_a_time(pipe: Pipeline, rows: list[int], value: float = 1.0) -> None:
    """Submit a request of each row count in turn, each after the last was answered."""
    for i, n in enumerate(rows):
        sink = RequestSink()
        pipe.submit(_item(i, value, rows=n, sink=sink))
        reply = await asyncio.wait_for(sink.answer, 5)
        assert reply is not None


def _timed_pipeline(
    model: TimedModel, inline_below: float, on_batch: Callable[[BatchStats], None] | None = None
) -> Pipeline:
    pipe = Pipeline(
        model="m",
        version="1",
        runner=model,
        max_wait=0.0,
        worker_id="w",
        on_batch=on_batch or (lambda _: None),
        inline_below=inline_below,
        clock=model.clock,
    )
    pipe.start()
    return pipe


async def test_a_batch_known_to_be_fast_runs_on_the_event_loop() -> None:
    """The first run of a size class goes to the thread; once its runs are known
    to take less than the bound, that class runs on the loop's own thread."""
    model = TimedModel(cost=0.0001)
    pipe = _timed_pipeline(model, inline_below=0.001)
    await _one_at_a_time(pipe, [1, 1, 1, 4, 4, 1])
    await asyncio.wait_for(pipe.close(), 5)
    loop_thread = threading.get_ident()
    on_loop = [t == loop_thread for t in model.threads]
    assert on_loop == [False, True, True, False, True, True]
    assert pipe.inline_runs == 4


async def test_what_is_learned_is_the_run_not_the_hand_over_to_the_thread() -> None:
    """A slow hand-over (time passing on the loop) does not keep a fast model off it."""
    model = TimedModel(cost=0.0001, loop_clock_step=0.005)
    pipe = _timed_pipeline(model, inline_below=0.001)
    await _one_at_a_time(pipe, [1, 1])
    await asyncio.wait_for(pipe.close(), 5)
    assert [t == threading.get_ident() for t in model.threads] == [False, True]


async def test_a_replys_inference_time_is_the_run_not_the_hand_over() -> None:
    """The time reported as inference (in the reply, the batch's stats and so
    the busy time) is the model's run alone; handing the batch to the model's
    thread and back is not the model's."""
    model = TimedModel(cost=0.002, loop_clock_step=0.005)
    stats: list[BatchStats] = []
    pipe = _timed_pipeline(model, inline_below=0.0, on_batch=stats.append)  # in its thread
    sink = RequestSink()
    pipe.submit(_item(0, 1.0, sink=sink))
    reply = await asyncio.wait_for(sink.answer, 5)
    await asyncio.wait_for(pipe.close(), 5)
    assert reply is not None and reply.timings is not None
    assert reply.timings.inference_ms == pytest.approx(2.0)
    assert [b.inference_s for b in stats] == [pytest.approx(0.002)]


@pytest.mark.parametrize(
    ("cost", "bound"), [(0.005, 0.001), (0.0, 0.0)], ids=["slow-model", "bound-of-zero"]
)
async def test_runs_stay_in_the_models_thread(cost: float, bound: float) -> None:
    """A model slower than the bound, or any model under a bound of 0."""
    model = TimedModel(cost=cost)
    pipe = _timed_pipeline(model, inline_below=bound)
    await _one_at_a_time(pipe, [1, 1, 1])
    await asyncio.wait_for(pipe.close(), 5)
    assert threading.get_ident() not in model.threads and pipe.inline_runs == 0


async def test_a_model_that_slows_down_goes_back_to_its_thread() -> None:
    model = TimedModel(cost=0.0001)
    pipe = _timed_pipeline(model, inline_below=0.001)
    await _one_at_a_time(pipe, [1, 1])
    model.cost = 0.005  # one slow run lifts the average past the bound
    await _one_at_a_time(pipe, [1, 1, 1])
    await asyncio.wait_for(pipe.close(), 5)
    loop_thread = threading.get_ident()
    assert [t == loop_thread for t in model.threads] == [False, True, True, False, False]


async def test_a_bad_item_fails_alone_on_the_event_loop_too() -> None:
    model = TimedModel(cost=0.0001)
    pipe = _timed_pipeline(model, inline_below=0.001)
    await _one_at_a_time(pipe, [3, 1, 1, 1])  # every class up to 3 rows is known to be fast
    sinks = [CollectingSink() for _ in range(3)]
    for i, (value, sink) in enumerate(zip([1.0, -1.0, 3.0], sinks, strict=True)):
        pipe.submit(_item(10 + i, value, sink=sink))
    await asyncio.wait_for(pipe.close(), 5)
    assert pipe.inline_runs == 6  # two of the first four, the batch of 3, then its items one by one
    errors = [o.reply.error for s in sinks for o in s.outcomes if o.reply is not None]
    assert [e.code if e else None for e in errors] == [None, ErrorCode.INTERNAL, None]


class GatedModel(FakeModel):
    """Notes, from whichever thread runs it, that a run began."""

    def __init__(self) -> None:
        super().__init__()
        self.began = threading.Event()

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.began.set()
        return super().run(feeds)


async def test_a_full_batch_of_a_burst_starts_on_the_models_thread_at_once() -> None:
    """A burst's items are submitted one after another before the batch loop
    has a turn: once a full batch waits, it goes to the model's thread then,
    not after the whole burst has been handled."""
    model = GatedModel()
    pipe = _pipeline(model)
    pipe.start()
    await asyncio.sleep(0)  # the batch loop waits for items
    items = [_item(i, 1.0) for i in range(FakeModel.max_batch_size + 3)]
    for item in items:
        pipe.submit(item)
    # the event loop's thread blocks here: only the model's thread can begin a run
    assert model.began.wait(5)
    assert pipe.early_batches == 1
    await asyncio.wait_for(pipe.close(), 5)
    assert model.batches == [FakeModel.max_batch_size, 3]
    replies = [o.reply for i in items for o in i.sink.outcomes]  # type: ignore[attr-defined]
    assert len(replies) == len(items) and all(r is not None and r.ok for r in replies)


async def test_a_full_batch_known_to_be_fast_is_left_to_the_batch_loop() -> None:
    model = TimedModel(cost=0.0001)
    pipe = _timed_pipeline(model, inline_below=0.001)
    await _one_at_a_time(pipe, [FakeModel.max_batch_size])  # the full size class: fast
    early = pipe.early_batches  # that first run of the class went to the thread
    sinks = [RequestSink() for _ in range(FakeModel.max_batch_size)]
    for i, sink in enumerate(sinks):
        pipe.submit(_item(i, 1.0, sink=sink))
    assert pipe.early_batches == early
    await asyncio.wait_for(asyncio.gather(*(s.answer for s in sinks)), 5)
    await asyncio.wait_for(pipe.close(), 5)
    assert model.threads[1:] == [threading.get_ident()]  # one batch, on the loop


def _block_until(done: Callable[[], bool]) -> None:
    """Wait on the event loop's own thread, so that nothing else runs there."""
    deadline = time.monotonic() + 5
    while not done() and time.monotonic() < deadline:
        time.sleep(0.001)


async def test_a_run_that_ended_on_the_thread_passes_its_slot_to_the_next_full_batch() -> None:
    """In a long burst, batch after batch goes to the model's thread without
    the event loop having a turn, and every slot is given back in the end."""
    model = GatedModel()
    pipe = _pipeline(model)
    pipe.start()
    await asyncio.sleep(0)
    size = FakeModel.max_batch_size
    items = [_item(i, 1.0) for i in range(3 * size)]
    for n, item in enumerate(items):
        pipe.submit(item)
        if (n + 1) % size == 0:  # a full batch went to the thread: wait till its run ends
            _block_until(lambda: all(r.finished for r in pipe._in_flight))
    assert model.batches == [size, size, size] and pipe.early_batches == 3
    await asyncio.wait_for(pipe.close(), 5)
    replies = [o.reply for i in items for o in i.sink.outcomes]  # type: ignore[attr-defined]
    assert len(replies) == len(items) and all(r is not None and r.ok for r in replies)


class HeldModel(GatedModel):
    """Runs only once let go: a run that stays under way while the test submits more."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.began.set()
        assert self.go.wait(5)
        return super().run(feeds)


async def test_what_arrives_while_the_model_runs_is_the_next_batch_whole() -> None:
    """With the one model slot busy, later requests wait in the batcher, and
    all of them go in the batch that starts when the slot is free."""
    model = HeldModel()
    pipe = Pipeline(
        model="m", version="1", runner=model, max_wait=0.0, worker_id="w", on_batch=lambda _: None
    )
    pipe.start()
    sinks = [RequestSink() for _ in range(6)]
    pipe.submit(_item(0, 1.0, sink=sinks[0]))
    assert await asyncio.to_thread(model.began.wait, 5)
    for i, sink in enumerate(sinks[1:], 1):
        pipe.submit(_item(i, 1.0, sink=sink))
    for _ in range(5):
        await asyncio.sleep(0)  # the batch loop has its turns: nothing new may start
    assert model.batches == [] and len(pipe.batcher) == 5
    model.go.set()
    replies = await asyncio.wait_for(asyncio.gather(*(s.answer for s in sinks)), 5)
    await asyncio.wait_for(pipe.close(), 5)
    assert model.batches == [1, 5]
    assert all(r is not None and r.ok for r in replies)
