"""The pipeline with a fake model: isolation of bad items, expiry, output split."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from fleet.contract import Request
from fleet.errors import ErrorCode
from fleet.tensor import Tensor
from worker.pipeline import BatchStats, Item, Outcome, Pipeline

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


def _item(i: int, value: float, *, deadline: float | None = None, rows: int = 1) -> Item:
    x = np.full((rows, 2), value, np.float32)
    req = Request(
        id=f"r{i}",
        model="m",
        inputs=(Tensor.from_numpy("input", x),),
        deadline=deadline if deadline is not None else time.time() + 10,
        sent_at=time.time(),
    )
    return Item(request=req, feeds={"input": x}, rows=rows, token=i, reply_to="inbox")


async def _run(items: list[Item]) -> tuple[list[Outcome], FakeModel, list[BatchStats]]:
    out: list[Outcome] = []
    stats: list[BatchStats] = []
    model = FakeModel()

    async def emit(outcomes: list[Outcome]) -> None:
        out.extend(outcomes)

    pipe = Pipeline(
        model="m",
        version="1",
        runner=model,
        max_wait=0.01,
        worker_id="w",
        emit=emit,
        on_batch=stats.append,
    )
    for it in items:
        pipe.submit(it)
    pipe.start()
    await asyncio.wait_for(pipe.close(), 5)
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
