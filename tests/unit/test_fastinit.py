"""Fast constructors make the same objects as the dataclasses' own."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fleet.contract import ErrorInfo, Priority, Reply, Request, Stages, Timings, with_stages
from fleet.fastinit import positional
from fleet.tensor import DataType, Tensor, make_tensor

pytestmark = pytest.mark.unit

TENSOR = Tensor.from_numpy("x", np.arange(3, dtype=np.float32))
EXAMPLES: list[Any] = [
    TENSOR,
    Timings(queue_ms=1.0, inference_ms=2.0, batch_size=3, worker_id="w", received_at=4.0),
    Stages(coalesce_ms=0.5, request_broker_ms=1.5, total_ms=4.0),
    Reply(
        id="r",
        model="m",
        version="2",
        outputs=(TENSOR,),
        error=ErrorInfo(code=1, message="x", retriable=True),
        timings=Timings(batch_size=1),
        stages=Stages(total_ms=1.0),
    ),
    Request(
        id="q",
        model="m",
        version=None,
        inputs=(TENSOR,),
        deadline=1.0,
        priority=Priority.BATCH,
        parameters={"a": 1},
        sent_at=0.5,
        timeout=2.0,
        arrived=3.0,  # compare=False: checked below all the same
        headers={"traceparent": "t"},
    ),
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: type(e).__name__)
def test_the_fast_constructor_makes_the_same_object(example: Any) -> None:
    cls = type(example)
    values = [getattr(example, f.name) for f in dataclasses.fields(cls)]
    made = positional(cls)(*values)
    assert type(made) is cls and made == example
    assert [getattr(made, f.name) for f in dataclasses.fields(cls)] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, dataclasses.fields(cls)[0].name, "changed")


def test_with_stages_is_replace() -> None:
    reply = next(e for e in EXAMPLES if isinstance(e, Reply))
    stages = Stages(*(float(i) for i in range(len(dataclasses.fields(Stages)))))
    made = with_stages(reply, stages)
    assert made.stages is stages and made == dataclasses.replace(reply, stages=stages)
    assert [getattr(made, f.name) for f in dataclasses.fields(Reply)] == [
        getattr(dataclasses.replace(reply, stages=stages), f.name)
        for f in dataclasses.fields(Reply)
    ]


def test_make_tensor_takes_the_fields_in_order() -> None:
    made = make_tensor("x", DataType.FP32, (3,), TENSOR.data)
    assert made == TENSOR


def test_classes_it_cannot_make_faithfully_are_refused() -> None:
    @dataclasses.dataclass
    class Plain:
        a: int

    @dataclasses.dataclass(slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            raise AssertionError

    @dataclasses.dataclass(slots=True)
    class Clashing:
        _cls: int

    for cls in (Plain, Checked, Clashing, int):
        with pytest.raises(TypeError):
            positional(cls)
