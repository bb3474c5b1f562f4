"""Deadlines across clocks: the budget travels on the wire and is judged on
the receiving host's monotonic clock, whatever the two wall clocks say."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from fleet import wire
from fleet.contract import CLOCK_SKEW_TOLERANCE_S, Request
from fleet.tensor import Tensor

pytestmark = pytest.mark.unit

CLIENT_NOW = 1_700_000_000.0  # the client's wall clock at publish
TIMEOUT = 2.0
ARRIVED = 500.0  # the worker's monotonic clock when the message arrived


def _published(timeout: float = TIMEOUT) -> bytes:
    req = Request(
        id="r",
        model="m",
        inputs=(Tensor.from_numpy("x", np.ones(2, np.float32)),),
        deadline=CLIENT_NOW + timeout,
        sent_at=CLIENT_NOW,
        timeout=timeout,
    )
    return wire.encode_requests([req], "inbox")


def _arrived(data: bytes, at: float = ARRIVED) -> Request:
    (req,) = wire.decode_requests(data, arrived=at).items
    assert isinstance(req, Request)
    return req


def test_the_budget_and_the_arrival_time_travel_with_the_request() -> None:
    req = _arrived(_published())
    assert (req.timeout, req.arrived, req.deadline) == (TIMEOUT, ARRIVED, CLIENT_NOW + TIMEOUT)


@pytest.mark.parametrize("skew", [TIMEOUT + 3, -(TIMEOUT + 3), -3600.0])
def test_skewed_worker_clock_drops_nothing_early_and_still_expires(skew: float) -> None:
    req = _arrived(_published())
    worker_wall = CLIENT_NOW + skew  # the message arrives at once
    # live during the whole budget, on the worker's own monotonic clock
    for elapsed in (0.0, TIMEOUT / 2, TIMEOUT * 0.99):
        assert not req.expired(worker_wall + elapsed, monotonic=ARRIVED + elapsed)
    # and expired once the budget is spent, however the wall clocks disagree
    assert req.expired(worker_wall + TIMEOUT, monotonic=ARRIVED + TIMEOUT)


def test_a_worker_far_ahead_of_the_tolerance_trusts_its_wall_clock() -> None:
    req = _arrived(_published())
    assert req.expired(CLIENT_NOW + TIMEOUT + CLOCK_SKEW_TOLERANCE_S, monotonic=ARRIVED)


def test_a_request_that_waited_in_the_broker_past_its_deadline_expires() -> None:
    req = _arrived(_published())
    waited = TIMEOUT + CLOCK_SKEW_TOLERANCE_S + 1  # in the broker queue, clocks agreeing
    assert req.expired(CLIENT_NOW + waited, monotonic=ARRIVED)


def test_the_client_restamps_the_remaining_budget_at_each_publish() -> None:
    req = Request(id="r", model="m", inputs=(), deadline=CLIENT_NOW + 10, timeout=10.0)
    body = wire.with_timeout(wire.encode_request_body(req), 0.25)
    got = _arrived(wire.encode_requests([body], "inbox"))
    assert got.timeout == 0.25
    assert got.expired(CLIENT_NOW, monotonic=ARRIVED + 0.25)


def test_a_request_already_past_its_deadline_is_published_with_no_budget() -> None:
    req = Request(id="r", model="m", inputs=(), deadline=1.0)
    got = _arrived(wire.encode_requests([req], "inbox"))
    assert got.timeout is not None and got.timeout < 0
    assert got.expired(0.0, monotonic=ARRIVED)


@pytest.mark.parametrize("field", ["deadline", "timeout"])
def test_nan_deadline_or_budget_counts_as_expired(field: str) -> None:
    values = {"deadline": CLIENT_NOW + 1, "timeout": 1.0, field: math.nan}
    req = Request(id="r", model="m", inputs=(), **values)  # type: ignore[arg-type]
    got = _arrived(wire.encode_requests([req], "inbox"))
    assert got.expired(CLIENT_NOW, monotonic=ARRIVED)


def _version_1_frame(req: Request) -> bytes:
    """``req`` (no inputs, no parameters) in a version 1 frame: no timeout."""

    def text(value: str) -> bytes:
        return struct.pack("<H", len(value)) + value.encode()

    body = text(req.id) + text(req.model) + text(req.version or "")
    body += struct.pack("<ddBHH", req.deadline, req.sent_at, req.priority, 0, 0)
    head = struct.pack("<4sBBH", wire.MAGIC, 1, wire.KIND_REQUESTS, 0)
    return head + text("inbox") + struct.pack("<II", 1, len(body)) + body


def test_version_1_frames_still_decode_and_use_the_wall_clock() -> None:
    req = Request(id="old", model="m", inputs=(), deadline=CLIENT_NOW + 1, sent_at=CLIENT_NOW)
    (got,) = wire.decode_requests(_version_1_frame(req)).items
    assert isinstance(got, Request)
    assert (got.id, got.deadline, got.timeout) == ("old", CLIENT_NOW + 1, None)
    assert not got.expired(CLIENT_NOW + 0.5)
    assert got.expired(CLIENT_NOW + 1)


def test_request_frames_are_version_2_and_reply_frames_readable_by_version_1() -> None:
    assert wire.encode_requests([], "x")[4] == 2
    assert wire.encode_replies([])[4] == 1


def test_waited_counts_on_the_local_monotonic_clock() -> None:
    req = _arrived(_published())
    assert req.waited(CLIENT_NOW - 3600, monotonic=ARRIVED + 0.5) == 0.5
    local = Request(id="r", model="m", inputs=(), deadline=2.0, sent_at=10.0)
    assert local.waited(9.0) == 0.0 and local.waited(10.5) == 0.5
