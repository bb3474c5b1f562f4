"""The latency benchmark's load generator, run alone (its "null" mode): the
seeded Poisson arrivals it starts, and the shape of what it reports, which
the benchmark takes out of the fleet's CPU per request; how it finds the
broker process whose CPU it reports beside the fleet's; and how it counts
wake-ups."""

from __future__ import annotations

import math
import os
import socket
import time

import numpy as np
import pytest

from benchmarks.arrivals import offsets
from benchmarks.latency import ROOT, _broker_clock, _client
from benchmarks.request_path import listener_pid, wakeups

pytestmark = pytest.mark.unit


def test_the_generator_alone_starts_every_seeded_arrival_and_reports_its_cpu() -> None:
    result = _client(
        ROOT,
        broker="unused://",
        model="m",
        width=4,
        seed=3,
        mode="null",
        stages=5,
        rate=400,
        duration=0.5,
    )
    rng = np.random.default_rng(3)
    rng.standard_normal((256, 4))  # the request pool, drawn first
    assert len(result["lat"]) == len(list(offsets(rng, 400, 0.5)))
    assert {len(row) for row in result["stages"]} == {5}
    assert result["cpu_s"] > 0
    assert isinstance(result["wakeups"], int)


def test_a_wait_that_an_event_ends_counts_as_a_wake_up() -> None:
    """The benchmark counts a process's voluntary context switches: each
    sleep here is one (at least; the interpreter may block on its own too)."""
    before = wakeups(os.getpid())
    for _ in range(20):
        time.sleep(0.001)
    assert wakeups(os.getpid()) - before >= 20
    assert wakeups(2**22 + 1) == 0  # no such process: nothing counted


def test_the_broker_process_is_found_by_its_listening_port() -> None:
    """The benchmark reports the CPU of the broker it finds on the URL's port:
    here, this process listens; a port nobody listens on, or no port, finds none."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert listener_pid(f"amqp://guest:guest@127.0.0.1:{port}/") == os.getpid()
        assert listener_pid(f"kafka://localhost:{port}") == os.getpid()
        assert _broker_clock(f"kafka://127.0.0.1:{port}")() >= 0.0
    assert listener_pid(f"kafka://127.0.0.1:{port}") is None  # closed now
    assert listener_pid("memory://") is None
    assert math.isnan(_broker_clock("memory://")())
