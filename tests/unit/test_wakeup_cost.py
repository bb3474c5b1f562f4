"""The wake-up cost benchmark's receivers: every message is read, and the
CPU is counted per wake-up."""

from __future__ import annotations

import pytest

from benchmarks import wakeup_cost

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind", wakeup_cost.KINDS)
def test_a_receiver_reads_every_message_and_counts_its_cpu_per_wake_up(kind: str) -> None:
    r = wakeup_cost.receive(kind, rate=200, seconds=0.25)
    assert r["kind"] == kind
    assert r["messages"] == 50  # 200 a second for a quarter of one, none lost
    assert 1 <= r["wakes"] <= 50  # messages read together are one wake-up
    assert r["cpu_us"] > 0
    assert r["switches"] >= 0


def test_an_unknown_receiver_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="not one of epoll, asyncio"):
        wakeup_cost.receive("threads", rate=1, seconds=1)


def test_the_latency_report_puts_the_fleets_wake_ups_at_the_hosts_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.latency import _cpu_target

    r = {  # 100 requests: client 0.5 s and worker 0.75 s of CPU, the model's 0.25 s of it
        "lat": [0.002] * 100,
        "cpu_s": 0.5,
        "worker_cpu_s": 0.75,
        "inference_s": 0.25,
        "wakeups": 300,
        "worker_wakeups": 200,
        "generator": {"lat": [0.0] * 100, "cpu_s": 0.1, "wakeups": 100},
    }
    assert not _cpu_target(r, {"asyncio": 100.0, "epoll": 25.0})  # 10 - 1 = 9 ms: not met
    out = capsys.readouterr().out
    assert "the fleet's 9.000 ms (target <= 1 ms: NOT met)" in out
    assert "client 3.00 (the load generator alone 1.00), worker 2.00" in out
    # (3 - 1 + 2) wake-ups of 100 us each: 0.4 ms of the 9
    assert "100.0 us of CPU on an asyncio loop (25.0 us on a plain epoll loop)" in out
    assert "the fleet's 4.00 wake-ups per request at that cost: 0.400 ms of its 9.000 ms" in out
    assert _cpu_target({**r, "cpu_s": 0.15, "worker_cpu_s": 0.25}, None)  # 1.5 - 1: met
    assert "wake-up on this host" not in capsys.readouterr().out


def test_a_wake_up_is_measured_only_for_runs_that_print_the_1_ms_target() -> None:
    from argparse import Namespace

    from benchmarks.latency import _reports_wake_cost

    def run(**changed: object) -> Namespace:
        args = {
            "wake_cost": True,
            "rates": [150, 1000],
            "event_loops": "asyncio",
            "interpreters": "",
        }
        return Namespace(**{**args, "baseline_ref": None, "repeat": 1, **changed})

    assert _reports_wake_cost(run())
    assert _reports_wake_cost(run(baseline_ref="HEAD~1"))  # one run of each build: reported
    assert not _reports_wake_cost(run(wake_cost=False))
    assert not _reports_wake_cost(run(rates=[1000, 4000]))  # no rate of the 1 ms target
    assert not _reports_wake_cost(run(event_loops="asyncio,uvloop"))  # ratios alone
    assert not _reports_wake_cost(run(interpreters="/a/python,/b/python"))
    assert not _reports_wake_cost(run(baseline_ref="HEAD~1", repeat=3))


def test_the_cold_work_is_the_codecs_round_trip_of_one_request() -> None:
    from benchmarks import cold_work

    work = cold_work.codec_round_trip()
    reply = work()
    assert reply.id == "0123456789abcdef"
    assert reply.model == "mlp"
    assert reply.timings.batch_size == 1
    (scores,) = reply.outputs
    assert scores.name == "probabilities"
    assert scores.to_numpy().shape == (1, 10)
    assert work() == reply  # the same work each run


def test_the_cold_work_is_measured_in_every_mode_in_a_process_of_its_own() -> None:
    from benchmarks import cold_work

    r = cold_work.measure(rate=500, runs=6)
    assert set(r) == set(cold_work.MODES)
    assert r["back_to_back"] > 0


def test_the_cold_work_options_are_checked() -> None:
    from benchmarks import cold_work

    for bad in (["--runs", "2"], ["--rate", "0"], ["--runs", "x"]):
        with pytest.raises(SystemExit) as exc:
            cold_work.main(bad)
        assert exc.value.code == 2


def test_the_latency_report_puts_the_codec_work_beside_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.latency import _cpu_target

    r = {
        "lat": [0.002] * 100,
        "cpu_s": 0.05,
        "worker_cpu_s": 0.05,
        "inference_s": 0.0,
        "wakeups": 300,
        "worker_wakeups": 200,
    }
    host = {"asyncio": 50.0, "epoll": 25.0}
    cold = {"back_to_back": 25.0, "sleeping": 200.0, "busy": 100.0}
    assert _cpu_target(r, host, cold)
    out = capsys.readouterr().out
    assert (
        "codec work for one request (both sides) on this host: 25.0 us back to back; "
        "once every 6.67 ms: 200.0 us asleep between (8.0x), 100.0 us busy between (4.0x)"
    ) in out
    _cpu_target(r, host)
    assert "codec work" not in capsys.readouterr().out
