"""How the settlements of one RabbitMQ channel become frames: decisions made
together leave in as few frames as they allow, and a ``multiple`` frame never
covers a delivery that is still open."""

from __future__ import annotations

import asyncio

import pytest

from fleet.transport._amqp_consumer import Settler

pytestmark = pytest.mark.unit


class Underlay:
    """Records the settlement frames a channel would write, in order."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool, bool]] = []

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple, False))

    def nack(self, tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        self.frames.append(("nack", tag, multiple, requeue))


def settler(tags: range) -> tuple[Settler, Underlay]:
    underlay = Underlay()
    s = Settler(underlay)  # type: ignore[arg-type]
    for tag in tags:
        s.delivered(tag)
    return s, underlay


def broker_view(frames: list[tuple[str, int, bool, bool]], tags: range) -> dict[int, str]:
    """What the broker makes of the frames: each tag's fate, as AMQP defines
    ``multiple`` (every tag up to this one not settled before)."""
    fate: dict[int, str] = {}
    for kind, tag, multiple, requeue in frames:
        hit = [t for t in tags if t not in fate and (t <= tag if multiple else t == tag)]
        for t in hit:
            fate[t] = "ack" if kind == "ack" else ("requeue" if requeue else "reject")
    return fate


async def test_acks_made_together_leave_in_one_frame() -> None:
    s, underlay = settler(range(1, 201))
    for t in range(1, 201):
        s.settle(t, ack=True, requeue=False)
    await s.idle()
    assert underlay.frames == [("ack", 200, True, False)]


async def test_a_delivery_still_open_is_never_covered() -> None:
    tags = range(1, 9)
    s, underlay = settler(tags)
    decide: dict[int, tuple[bool, bool]] = {
        1: (True, False),
        2: (True, False),
        3: (False, True),  # requeue
        4: (True, False),
        5: (False, False),  # reject
        7: (True, False),  # past 6, which stays open
        8: (False, True),
    }
    for t, (a, r) in decide.items():
        s.settle(t, ack=a, requeue=r)
    await s.idle()
    want = {t: ("ack" if a else "requeue" if r else "reject") for t, (a, r) in decide.items()}
    assert broker_view(underlay.frames, tags) == want
    assert len(underlay.frames) == 6  # 1-2, 3, 4, 5, then 7 and 8 one by one

    s.settle(6, ack=True, requeue=False)
    await s.idle()
    assert broker_view(underlay.frames, tags) == want | {6: "ack"}


async def test_decisions_made_after_a_flush_follow_in_the_next() -> None:
    s, underlay = settler(range(1, 5))
    s.settle(1, ack=True, requeue=False)
    await asyncio.sleep(0)  # the flush scheduled by the decision has written tag 1
    assert underlay.frames == [("ack", 1, False, False)]
    s.settle(2, ack=True, requeue=False)
    s.settle(3, ack=True, requeue=False)
    await s.idle()
    assert broker_view(underlay.frames, range(1, 5)) == {1: "ack", 2: "ack", 3: "ack"}
    assert len(underlay.frames) == 2


async def test_a_tag_settled_twice_or_never_delivered_writes_nothing() -> None:
    s, underlay = settler(range(1, 3))
    s.settle(1, ack=True, requeue=False)
    s.settle(1, ack=False, requeue=True)
    s.settle(9, ack=True, requeue=False)
    await s.idle()
    assert underlay.frames == [("ack", 1, False, False)]


async def test_a_decision_is_written_in_a_callback_and_idle_waits_for_it() -> None:
    s, underlay = settler(range(1, 3))
    await s.idle()  # nothing decided: returns at once
    s.settle(2, ack=True, requeue=False)
    assert underlay.frames == []  # not in the decider's own call
    await s.idle()
    assert underlay.frames == [("ack", 2, False, False)]


async def test_a_broken_channel_is_logged_and_idle_still_returns() -> None:
    tried: list[int] = []

    class Broken(Underlay):
        def ack(self, tag: int, *, multiple: bool = False) -> None:
            tried.append(tag)
            raise ConnectionError("gone")

    s = Settler(Broken())  # type: ignore[arg-type]
    s.delivered(1)
    s.settle(1, ack=True, requeue=False)
    await s.idle()
    s.delivered(2)
    s.settle(2, ack=True, requeue=False)  # a later decision schedules a flush again
    await s.idle()
    assert tried == [1, 2]
