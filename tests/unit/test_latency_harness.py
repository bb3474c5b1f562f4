"""The latency benchmark's load generator, run alone (its "null" mode): the
seeded Poisson arrivals it starts, and the shape of what it reports, which
the benchmark takes out of the fleet's CPU per request; how it finds the
broker process whose CPU it reports beside the fleet's; how it counts
wake-ups and, when asked, calls; and arrivals that keep their pace when the
loop's turns are slow."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.arrivals import offsets, poisson
from benchmarks.latency import ROOT, _broker_clock, _client, interleaved
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
    assert result["calls"] == {"python": 0, "builtin": 0}  # not counted unless asked


def test_the_generator_counts_its_calls_per_arrival_when_asked() -> None:
    """With ``count_calls`` the client counts its thread's calls over its run
    (``benchmarks/calls.py``): twice the arrivals, more calls."""
    args = {"broker": "unused://", "model": "m", "width": 4, "seed": 3, "mode": "null"}
    short = _client(ROOT, **args, stages=5, rate=400, duration=0.25, count_calls=True)
    long = _client(ROOT, **args, stages=5, rate=400, duration=0.5, count_calls=True)
    assert len(long["lat"]) > len(short["lat"]) > 0
    assert long["calls"]["python"] > short["calls"]["python"] > len(short["lat"])
    assert long["calls"]["builtin"] > short["calls"]["builtin"] > 0


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


async def test_calls_due_by_a_slow_turn_of_the_loop_all_start_in_the_next() -> None:
    """Arrivals 0.5 ms apart on average against turns of the loop of 2 ms or
    more: the generator starts every call due by then in one turn (a timer
    per call would start one a turn, fall behind and catch up in bursts)."""
    loop = asyncio.get_running_loop()
    turn, started = 0, []

    def slow_turn() -> None:
        nonlocal turn
        turn += 1
        time.sleep(0.002)
        if not done:
            loop.call_soon(slow_turn)

    async def call(i: int) -> None:
        started.append(turn)

    done = False
    loop.call_soon(slow_turn)
    await poisson(call, np.random.default_rng(5), 2000, 0.2)
    done = True
    expected = len(list(offsets(np.random.default_rng(5), 2000, 0.2)))
    assert len(started) == expected > 300
    # at most one turn per 2 ms of the 0.2 s, however slow the host: fewer
    # turns than half the calls (one call a turn would need a turn each)
    assert len(set(started)) < expected / 2


def test_interleaved_rounds_take_turns_at_going_first() -> None:
    rounds = interleaved(["baseline", "this"], 4)
    assert rounds == [["baseline", "this"], ["this", "baseline"]] * 2
    assert interleaved(["asyncio", "uvloop"], 1) == [["asyncio", "uvloop"]]


def test_each_interpreter_compared_describes_itself_or_is_refused(tmp_path: Path) -> None:
    """``latency.py --interpreters`` names what each interpreter is before it
    measures it, and refuses one that cannot run this project, saying why."""
    from benchmarks.latency import describe_interpreter

    assert describe_interpreter(sys.executable).startswith(f"CPython {platform.python_version()},")
    bare = tmp_path / "python"
    bare.write_text("#!/bin/sh\necho 'no such module: fleet' >&2\nexit 1\n")
    bare.chmod(0o755)
    with pytest.raises(RuntimeError, match="cannot run this project: no such module: fleet"):
        describe_interpreter(str(bare))
    with pytest.raises(RuntimeError, match="cannot run this project: No such file"):
        describe_interpreter(str(tmp_path / "absent"))


def test_a_comparison_prints_the_fleets_cpu_less_the_generators_and_its_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Where each run measured the load generator alone (the rates of the
    1 ms target), a comparison prints the fleet's CPU per request less it,
    and that figure's ratio beside the ratio of the whole."""
    from benchmarks.latency import compare_runs

    def run(cpu_s: float, generator_s: float) -> dict[str, object]:
        lat = [0.002] * 100
        rate = {"lat": lat, "cpu_s": cpu_s, "worker_cpu_s": 0.1, "inference_s": 0.0}
        rate["generator"] = {"lat": lat, "cpu_s": generator_s}
        sat = {"lat": lat, "seconds": 1.0, "cpu_s": 0.01, "worker_cpu_s": 0.01, "inference_s": 0.0}
        return {"rates": {150: rate}, "saturation": sat}

    compare_runs("m", {"a": [run(0.1, 0.04)], "b": [run(0.05, 0.04)]})
    out = capsys.readouterr().out
    assert "CPU/req 2.000 ms (the fleet's 1.600, less the load generator's)" in out
    assert "CPU/req 1.500 ms (the fleet's 1.100, less the load generator's)" in out
    assert "CPU 0.75x (the fleet's 0.69x)" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--interpreters", "/a/python"],
        ["--interpreters", "/a/python,/a/python"],
        ["--interpreters", "/a/python,/b/python", "--event-loops", "asyncio,uvloop"],
        ["--interpreters", "/a/python,/b/python", "--baseline-ref", "HEAD~1"],
    ],
)
def test_an_interpreter_comparison_that_cannot_be_made_is_refused_before_any_work(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import latency

    monkeypatch.setattr(sys, "argv", ["latency.py", *argv])
    with pytest.raises(SystemExit) as exc:
        latency.main()
    assert exc.value.code == 2
    assert "--interpreters" in capsys.readouterr().err
