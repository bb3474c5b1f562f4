"""The library-floor benchmark's echo answers every call it makes, on each real broker,
and splits each round trip into its broker legs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from benchmarks import library_floor
from benchmarks.arrivals import offsets
from tests.conftest import BROKERS, broker_url_for


@pytest.mark.parametrize(
    "kind",
    [pytest.param(k, marks=BROKERS[k.split("-")[0]].mark) for k in ("amqp", "amqp-wire", "kafka")],
)
def test_the_echo_answers_every_call(kind: str) -> None:
    url = broker_url_for(kind.split("-")[0])
    runs = library_floor.measure(kind, url, [40], 1.0, 128)
    run = runs[40]
    assert run["failed"] == 0
    calls = len(list(offsets(np.random.default_rng(0), 40, 1.0)))  # the benchmark's seed
    assert len(run["lat"]) == calls > 0
    assert all(x > 0 for x in run["lat"])
    # each round trip split into its two broker legs, on the host's one monotonic
    # clock: both legs happen within the round trip, so neither is negative
    # and together they are no longer than it (the server's own time, at
    # least microseconds, lies between them: the 1 us allowed is rounding's)
    legs = list(zip(run["request_leg"], run["reply_leg"], strict=True))
    assert len(legs) == calls
    assert all(
        0 <= req and 0 <= rep and req + rep <= lat + 1e-6
        for (req, rep), lat in zip(legs, run["lat"], strict=True)
    )
    assert run["cpu_s"] > 0
    assert run["inference_s"] == 0.0 and run["stages"] == []


@BROKERS["amqp"].mark
async def test_the_wire_client_fails_typed_when_the_broker_closes_its_channel() -> None:
    """A consume on a queue that does not exist: the broker closes the channel
    (404), and the call waiting on it raises instead of hanging."""
    from benchmarks.amqp_wire import WireError, open_wire

    wire = await open_wire(broker_url_for("amqp").split("?", 1)[0])
    try:
        with pytest.raises(WireError, match="404"):
            await asyncio.wait_for(wire.consume("no-such-queue", "t", print, no_ack=True), 10)
    finally:
        wire.close()


@pytest.mark.unit
def test_the_wire_client_reads_the_two_properties_past_those_it_skips() -> None:
    from benchmarks.amqp_wire import CONTENT, _properties

    flags = 0x8000 | 0x1000 | 0x0800 | 0x0400 | 0x0200 | 0x0100  # type, mode, priority, ...
    props = b"\x04json" + b"\x02" + b"\x05" + b"\x03abc" + b"\x02rt" + b"\x0210"
    size, correlation_id, reply_to = _properties(memoryview(CONTENT.pack(60, 0, 7, flags) + props))
    assert (size, correlation_id, reply_to) == (7, b"abc", b"rt")
