"""Latency at everyday load, where it goes, and what the fleet costs in CPU.

    .venv/bin/python benchmarks/latency.py [--brokers amqp,kafka] [--models-to-run mlp,digits]
        [--rates 200,1000,4000] [--duration 10] [--warmup 5] [--baseline-ref HEAD~1 [--repeat 3]]
        [--event-loops asyncio,uvloop --repeat 3] [--interpreters PYTHON,PYTHON --repeat 3]

For each broker and model, one ``fleet worker`` process and one client process:

0. warm-up, not counted: 2 s of a closed loop, then ``--warmup`` seconds at the
   first rate (a broker just started answers slowly while its JIT compiles);
1. idle: both connected, no traffic, for ``--idle`` seconds: CPU share of a core
   each, and the broker's where its process listens on this host (it shares the
   cores: a local Kafka holding the topics of many test runs took 18% of a
   core with no traffic, a new one 4-8%; ``scripts/kafka.sh reset`` makes one new);
2. open-loop Poisson arrivals (seeded) at each rate, every call timed from
   its arrival (a start delayed by a busy loop counts, past the loop's 1 ms
   timer resolution; how late the calls began is printed): p50 and p99 of the whole
   call and of every stage (:mod:`fleet.stages`), and CPU per request of the
   client and the worker, with the model's own time taken out (the batches'
   inference time, per request); at 200 req/s and below, where the target
   is 1 ms, the same arrivals once more against a client that answers at
   once: the load generator's own CPU per request, taken out of the fleet's
   (the figures before it are printed too), and the broker's CPU per request
   beside it, not counted; and the wake-ups per request (voluntary context
   switches) of the client, of the load generator alone and of the worker:
   at such rates each request wakes the processes one by one, and every
   wake-up costs: what one bare wake-up costs on this host is measured once
   per run (:mod:`benchmarks.wakeup_cost`; ``--no-wake-cost`` skips it) and
   the fleet's wake-ups per request are put at that cost; and so is what the
   fleet's own codec work for one request costs back to back and once every
   1/150 s (:mod:`benchmarks.cold_work`): how much dearer this host makes
   work that waits between requests;
   then the same arrivals against the broker library's own request/reply
   echo (:mod:`benchmarks.library_floor`: aio-pika or aiokafka with the same
   delivery guarantees and nothing else; ``--no-floor`` skips it, and runs
   compared over ``--repeat`` do not take it): its figures, its two broker
   legs beside the fleet's ``request_broker`` and ``reply_broker``, and the
   fleet's ratios to them; and the protocol's own floor, the same echo with
   its requests sent and read by :mod:`fleet.transport._amqp_wire` or
   :mod:`fleet.transport._kafka_wire` (an asyncio ``Protocol``, no client
   library): near the least a Python client spends;
3. saturation: ``--in-flight`` requests in flight (closed loop): requests/s;
   with ``--baseline-ref``, the same against a worker and client of that git
   revision (checked out in a temporary worktree), in the same run: the ratio.

Prints the targets and whether each is met, and which interpreter ran the
worker and the client. With ``--event-loops``, each loop
(worker and client on it) is measured ``--repeat`` times, interleaved, and the
medians are compared with asyncio's instead; with ``--interpreters``, each
Python executable given (a venv made from that interpreter, with this
project installed) runs the worker and the client, the same way, compared
with the first; with ``--baseline-ref`` and
``--repeat`` above 1, each build is measured that many times, interleaved,
and the medians are compared with the baseline's. Interleaved rounds take
turns at going first (ABBA...), so that a host or broker that drifts over
the run favours neither. Brokers come from
FLEET_TEST_AMQP_URL / FLEET_TEST_KAFKA_URL, else the local scripts start them.
Traffic goes to loopback only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import cold_work, library_floor, wakeup_cost  # noqa: E402
from benchmarks.request_path import (  # noqa: E402
    _cpu_s,
    broker_url,
    listener_pid,
    stop_process,
    wakeups,
)
from benchmarks.revisions import add_worktree, remove_worktree  # noqa: E402
from fleet import interpreter  # noqa: E402
from fleet.stages import CLIENT_STAGES  # noqa: E402
from fleet.worker_command import worker_argv, worker_command  # noqa: E402
from fleetctl.demo import wait_model_served  # noqa: E402

WIDTH = {"mlp": 256, "digits": 64}
CPU_TARGET_RATE = 200  # at and below this rate: the fleet's CPU per request <= 1 ms
CPU_TARGET_WORK_RATE = 150.0  # the rate the host probes space their work at
TARGETS = {  # (rate, broker) -> (p50 ms, p99 ms)
    (1000, "amqp"): (3.0, 10.0),
    (1000, "kafka"): (5.0, 20.0),
    (4000, "amqp"): (None, 50.0),
    (4000, "kafka"): (None, 50.0),
}

# The client process: runs in the tree under test (this one or the baseline's),
# so it uses only the Client API every build has; stages where the build has them,
# and the heap frozen once connected where the build can (fleet.heap).
# A profile function counting the Python and the built-in calls it sees, in
# ``calls``; the client below and ``benchmarks/calls.py``'s worker hook share it.
COUNT_CALLS = r"""
calls = [0, 0]


def count(frame, event, arg):
    if event == "call":
        calls[0] += 1
    elif event == "c_call":
        calls[1] += 1
"""

CLIENT = (
    r"""
import array, asyncio, inspect, json, resource, sys, time
from operator import attrgetter
import numpy as np
from producer import Client
try:
    from fleet.heap import freeze_heap
except ImportError:
    freeze_heap = lambda: 0
"""
    + COUNT_CALLS
    + r"""
args = json.loads(sys.argv[1])
TIMER_SLACK = 0.001  # seconds an idle loop's timer may fire late


class NullClient:
    # Mode "null": the load generator alone. Each call is answered one turn
    # of the loop later (a real reply wakes its caller in a turn of its own)
    # with a reply of the real one's shape, so what this run spends is what
    # the generator and the bookkeeping below spend per request.

    def __init__(self):
        stages = type("Stages", (), {"__slots__": tuple(f"s{i}" for i in range(args["stages"]))})()
        for name in stages.__slots__:
            setattr(stages, name, 0.1)
        timings = type("Timings", (), {"inference_ms": 0.4, "batch_size": 1})()
        self.reply = type("Reply", (), {"error": None, "timings": timings, "stages": stages})()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def infer_reply(self, model, inputs, *, stages=False):
        await asyncio.sleep(0)
        return self.reply


async def main():
    rng = np.random.default_rng(args["seed"])
    pool = rng.standard_normal((256, args["width"])).astype(np.float32)
    # stage times flat in an array: a list per request would be 40,000 more
    # objects for the garbage collector to walk, the harness's, not the client's
    lat, flat, per, inference, get = array.array("d"), array.array("d"), 1, 0.0, None
    late = array.array("d")  # how long after its time each open-loop call began
    null = args["mode"] == "null"
    connected = NullClient() if null else Client(args["broker"], timeout=30, max_in_flight=100_000)
    async with connected as client:
        has_stages = "stages" in inspect.signature(client.infer_reply).parameters
        freeze_heap()
        extra = {"stages": True} if has_stages else {}
        if args["mode"] == "idle":
            cpu = time.process_time()
            await asyncio.sleep(args["duration"])
            print(json.dumps({"cpu_s": time.process_time() - cpu}))
            return
        woke = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw

        async def one(i, due=None):
            # An open-loop call's time counts from when it was due, not from
            # when its task began: a start delayed by a busy loop is the
            # caller's wait too. The first millisecond of delay is left out:
            # the loop's timers wake up to 1 ms late on an idle loop (epoll's
            # timeout is whole milliseconds, rounded up), the generator's
            # mechanics, not the fleet's.
            nonlocal inference, per, get
            t0 = time.perf_counter()
            if due is not None:
                delay = asyncio.get_running_loop().time() - due
                late.append(delay)
                t0 -= max(0.0, delay - TIMER_SLACK)
            x = {"input": pool[i % 256 : i % 256 + 1]}
            reply = await client.infer_reply(args["model"], x, **extra)
            if reply.error is None:
                lat.append(time.perf_counter() - t0)
                inference += reply.timings.inference_ms / 1000 / max(1, reply.timings.batch_size)
                if reply.stages is not None if has_stages else False:
                    if get is None:  # the harness's own cost per request kept small
                        per, get = len(reply.stages.__slots__), attrgetter(*reply.stages.__slots__)
                    flat.extend(get(reply.stages))

        if args.get("count_calls"):  # this thread's calls over the run, in calls
            sys.setprofile(count)
        cpu = time.process_time()
        t_start = time.perf_counter()
        end = t_start + args["duration"]
        if args["mode"] == "closed":
            counter = iter(range(1 << 40))
            async def loop():
                while time.perf_counter() < end:
                    await one(next(counter))
            await asyncio.gather(*(loop() for _ in range(args["in_flight"])))
        else:
            # each arrival a timer of the loop's that starts its call and sets
            # the next: one callback per request, not a sleep's task wake-up
            # and future on top
            # and set by their offsets from the start, summed as
            # benchmarks.arrivals.offsets sums them: the same seed starts the
            # same number of calls, whatever the loop's clock reads
            loop, tasks = asyncio.get_running_loop(), set()
            ended = loop.create_future()
            first = loop.time()

            def arrive(i, offset):
                # every call due by now starts now: a timer set from a timer's
                # callback runs a turn later at the earliest, so one call per
                # turn would fall behind whenever a turn takes longer than the
                # gap between arrivals, and catch up later in a burst
                now = loop.time()
                while True:
                    task = loop.create_task(one(i, first + offset))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    i, offset = i + 1, offset + rng.exponential(1.0 / args["rate"])
                    if offset >= args["duration"]:
                        ended.set_result(None)
                        return
                    if first + offset > now:
                        loop.call_at(first + offset, arrive, i, offset)
                        return

            loop.call_at(first, arrive, 0, 0.0)
            await ended
            await asyncio.gather(*tasks)
        seconds = time.perf_counter() - t_start
        sys.setprofile(None)
        stages = [flat[i : i + per].tolist() for i in range(0, len(flat), per)]
        woke = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - woke
        print(json.dumps({"lat": lat.tolist(), "stages": stages, "cpu_s": time.process_time() - cpu,
                          "seconds": seconds, "inference_s": inference, "wakeups": woke,
                          "calls": {"python": calls[0], "builtin": calls[1]},
                          "late": np.percentile(late, [50, 99]).tolist() if late else None}))

if args.get("event_loop") == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""
)


def _client(tree: Path, python: str = sys.executable, **args: Any) -> dict[str, Any]:
    out = subprocess.run(
        [python, "-c", CLIENT, json.dumps(args)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=float(args.get("duration", 10)) + 300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _worker(tree: Path, broker: str, models: Path, loop: str, python: str) -> subprocess.Popen[Any]:
    argv = worker_argv(
        broker=broker,
        models=models,
        worker_id="bench",
        command=worker_command(python=python, log_level="WARNING"),
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if loop != "asyncio":
        env["FLEET_EVENT_LOOP"] = loop
    return subprocess.Popen(argv, cwd=tree, env=env)


def _broker_clock(broker: str) -> Callable[[], float]:
    """The CPU seconds used so far by the broker process listening on this
    host for ``broker``'s URL (it shares the cores; its CPU is not the
    fleet's), or NaN where there is none to be seen."""
    pid = listener_pid(broker)

    def clock() -> float:
        try:
            return _cpu_s(pid) if pid is not None else float("nan")
        except OSError:  # it stopped (a restart): nothing to measure
            return float("nan")

    return clock


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(
    tree: Path,
    broker: str,
    model: str,
    args: argparse.Namespace,
    loop: str = "asyncio",
    python: str = sys.executable,
) -> dict[str, Any]:
    """Idle, each rate and saturation against one worker of ``tree``, the
    worker and the client on event loop ``loop``, run by interpreter ``python``."""
    models = args.models if tree == ROOT else tree / "models"
    worker = _worker(tree, broker, models, loop, python)
    base: dict[str, Any] = {"broker": broker, "model": model, "width": WIDTH[model], "seed": 0}
    base["python"] = python
    if loop != "asyncio":
        base["event_loop"] = loop
    try:
        asyncio.run(wait_model_served(broker, model))
        _client(tree, **base, mode="closed", duration=2, in_flight=32)  # warm the path
        if args.warmup > 0 and args.rates:  # and a broker just started (its JIT)
            _client(tree, **base, mode="open", rate=args.rates[0], duration=args.warmup)
        out: dict[str, Any] = {"rates": {}}
        broker_cpu = _broker_clock(broker)
        if args.idle > 0 and tree == ROOT:
            before, broker_before = _cpu_s(worker.pid), broker_cpu()
            idle = _client(tree, **base, mode="idle", duration=args.idle)
            out["idle"] = {
                "worker": (_cpu_s(worker.pid) - before) / args.idle,
                "client": idle["cpu_s"] / args.idle,
                "broker": (broker_cpu() - broker_before) / args.idle,
            }
        for rate in args.rates:
            before, broker_before = _cpu_s(worker.pid), broker_cpu()
            woke = wakeups(worker.pid)
            r = _client(tree, **base, mode="open", rate=rate, duration=args.duration)
            r["worker_cpu_s"] = _cpu_s(worker.pid) - before
            r["worker_wakeups"] = wakeups(worker.pid) - woke
            r["broker_cpu_s"] = broker_cpu() - broker_before
            if rate <= CPU_TARGET_RATE and tree == ROOT:  # the same arrivals, no fleet
                r["generator"] = _client(
                    tree,
                    **base,
                    mode="null",
                    stages=len(CLIENT_STAGES),
                    rate=rate,
                    duration=args.duration,
                )
            out["rates"][rate] = r
        before = _cpu_s(worker.pid)
        sat = _client(tree, **base, mode="closed", duration=args.duration, in_flight=args.in_flight)
        sat["worker_cpu_s"] = _cpu_s(worker.pid) - before
        out["saturation"] = sat
        return out
    finally:
        stop_process(worker, 60)


def _cpu_ms(r: dict[str, Any]) -> float:
    """Client + worker CPU ms per answered request, the model's own time excluded."""
    n = max(1, len(r["lat"]))
    return 1000 * (r["cpu_s"] + r["worker_cpu_s"] - r["inference_s"]) / n


def _per_request(r: dict[str, Any], total: float) -> float:
    """``total`` per request ``r`` answered."""
    return total / max(1, len(r["lat"]))


def _per_request_ms(r: dict[str, Any], cpu_s: float) -> float:
    """``cpu_s`` seconds of CPU in ms per request ``r`` answered."""
    return 1000 * _per_request(r, cpu_s)


def _generator_ms(r: dict[str, Any]) -> float:
    """The load generator's own CPU ms per request, where measured (0 if not):
    the same arrivals against a client that answers at once (mode "null")."""
    g = r.get("generator")
    return _per_request_ms(g, g["cpu_s"]) if g else 0.0


def _broker_ms(r: dict[str, Any]) -> float:
    """The broker's CPU ms per answered request (NaN where not measured)."""
    return _per_request_ms(r, r.get("broker_cpu_s", float("nan")))


def _client_ms(r: dict[str, Any]) -> float:
    """The client's CPU ms per answered request."""
    return _per_request_ms(r, r["cpu_s"])


def _wakeups(r: dict[str, Any]) -> tuple[float, float, float]:
    """The client's, the load generator's alone and the worker's voluntary
    context switches (each a sleep ended by an event) per request; NaN where
    a build's client does not count them."""
    nan = float("nan")
    g = r.get("generator")
    generator = _per_request(g, g.get("wakeups", nan)) if g else nan
    client = _per_request(r, r.get("wakeups", nan))
    worker = _per_request(r, r.get("worker_wakeups", nan))
    return client, generator, worker


def _cpu_target(
    r: dict[str, Any], wake_us: dict[str, float] | None, cold: dict[str, float] | None = None
) -> bool:
    """Print the fleet's CPU per request at a rate of the 1 ms target, and
    its wake-ups; whether the target is met. With ``wake_us`` (what one bare
    wake-up costs on this host, :mod:`benchmarks.wakeup_cost`), also what the
    fleet's own wake-ups come to at that cost; with ``cold`` (the fleet's
    codec work back to back and spaced, :mod:`benchmarks.cold_work`), that."""
    fleet = _cpu_ms(r) - _generator_ms(r)
    met = fleet <= 1.0
    print(
        f"  CPU per request {_cpu_ms(r):.3f} ms ({_split(r)}), less the load "
        f"generator's own {_generator_ms(r):.3f} ms: the fleet's {fleet:.3f} ms "
        f"(target <= 1 ms: {_v(met)}); the broker's own {_broker_ms(r):.3f} ms "
        f"(not counted)"
    )
    client, generator, worker = _wakeups(r)
    print(
        f"  wake-ups per request: client {client:.2f} (the load generator alone "
        f"{generator:.2f}), worker {worker:.2f}"
    )
    if wake_us:
        own = client - generator + worker
        print(
            f"  one bare wake-up on this host: {wake_us['asyncio']:.1f} us of CPU on an "
            f"asyncio loop ({wake_us['epoll']:.1f} us on a plain epoll loop); the fleet's "
            f"{own:.2f} wake-ups per request at that cost: {own * wake_us['asyncio'] / 1000:.3f} "
            f"ms of its {fleet:.3f} ms"
        )
    if cold:
        print(
            "  the fleet's codec work for one request (both sides) on this host: "
            + cold_work.describe(cold, CPU_TARGET_WORK_RATE)
        )
    return met


def _split(r: dict[str, Any]) -> str:
    """Where the CPU per request goes: the client's and the worker's share."""
    return f"client {_client_ms(r):.3f}, worker {_cpu_ms(r) - _client_ms(r):.3f}"


def _vs_floor(r: dict[str, Any], f: dict[str, Any], name: str = "library floor") -> None:
    """A floor's figures at the same rate, and the fleet's ratios to them."""
    lat = [x * 1000 for x in r["lat"]]
    f_lat = [x * 1000 for x in f["lat"]]
    f50, f99 = _pct(f_lat, 50), _pct(f_lat, 99)
    if f.get("failed"):
        print(f"{'':>8} {name}: {f['failed']} calls failed or went unanswered")
    print(
        f"{'':>8} {name}: {len(f_lat) / f['seconds']:.0f} req/s, p50 {f50:.2f} ms, "
        f"p99 {f99:.2f} ms, CPU/req {_cpu_ms(f):.3f} ms ({_split(f)}); the fleet's "
        f"p50 {_pct(lat, 50) / f50:.3g}x, p99 {_pct(lat, 99) / f99:.3g}x, "
        f"CPU/req {_cpu_ms(r) / _cpu_ms(f):.3g}x"
    )
    if f.get("request_leg") and r["stages"]:  # the broker legs, leg by leg
        st = np.array(r["stages"])  # ms
        legs = []
        for leg, stage in (("request", "request_broker"), ("reply", "reply_broker")):
            fleet = list(st[:, CLIENT_STAGES.index(stage)])
            floor = [x * 1000 for x in f[f"{leg}_leg"]]
            legs.append(
                f"{leg} p50 {_pct(floor, 50):.2f} / p99 {_pct(floor, 99):.2f} ms "
                f"(the fleet's {stage} {_pct(fleet, 50) / _pct(floor, 50):.3g}x / "
                f"{_pct(fleet, 99) / _pct(floor, 99):.3g}x)"
            )
        print(f"{'':>8} {name}'s broker legs: {'; '.join(legs)}")


def report(
    label: str,
    broker: str,
    res: dict[str, Any],
    base: dict[str, Any] | None,
    wake_us: dict[str, float] | None = None,
    cold: dict[str, float] | None = None,
) -> bool:
    ok = True
    print(f"\n== {label}")
    if "idle" in res:
        w, c = res["idle"]["worker"], res["idle"]["client"]
        met = w < 0.02 and c < 0.02
        ok &= met
        print(
            f"idle: worker {w:.2%} of a core, client {c:.2%} (target < 2% each: {_v(met)}); "
            f"the broker {res['idle'].get('broker', float('nan')):.2%} (not counted)"
        )
    head = "".join(f"{s[:9]:>10}" for s in CLIENT_STAGES)
    print(f"{'rate':>8} {'req/s':>8} {'p50':>7} {'p99':>7}  CPU/req  | stage p50 / p99 ms:{head}")
    for rate, r in res["rates"].items():
        lat = [x * 1000 for x in r["lat"]]
        st = np.array(r["stages"]) if r["stages"] else np.zeros((0, len(CLIENT_STAGES)))
        p50s = "".join(f"{_pct(list(st[:, i]), 50):>10.2f}" for i in range(st.shape[1]))
        p99s = "".join(f"{_pct(list(st[:, i]), 99):>10.2f}" for i in range(st.shape[1]))
        rps = len(lat) / r["seconds"]
        print(
            f"{rate:>8} {rps:>8.0f} {_pct(lat, 50):>7.2f} {_pct(lat, 99):>7.2f} "
            f"{_cpu_ms(r):>7.3f}  | p50{' ' * 14}{p50s}\n{'':>42}| p99{' ' * 14}{p99s}"
        )
        if r.get("late"):
            print(
                f"{'':>8} calls began after their arrival time by p50 {r['late'][0] * 1000:.2f} / "
                f"p99 {r['late'][1] * 1000:.2f} ms (counted in p50 and p99 past the first 1 ms)"
            )
        if rate in res.get("floor", {}):
            _vs_floor(r, res["floor"][rate])
        if rate in res.get("wire_floor", {}):
            _vs_floor(r, res["wire_floor"][rate], "protocol floor")
        if base is not None and rate in base["rates"]:
            b = base["rates"][rate]
            b_lat = [x * 1000 for x in b["lat"]]
            b50, b99 = _pct(b_lat, 50), _pct(b_lat, 99)
            print(
                f"{'':>8} baseline build: p50 {b50:.2f} ms, p99 {b99:.2f} ms, "
                f"CPU/req {_cpu_ms(b):.3f} ms; this build's p50 {_pct(lat, 50) / b50:.2f}x, "
                f"p99 {_pct(lat, 99) / b99:.2f}x"
            )
        p50_t, p99_t = TARGETS.get((int(rate), broker), (None, None))
        if p50_t is not None:
            met = _pct(lat, 50) <= p50_t
            ok &= met
            print(f"  p50 {_pct(lat, 50):.2f} ms (target <= {p50_t} ms: {_v(met)})")
        if p99_t is not None:
            met = _pct(lat, 99) <= p99_t
            ok &= met
            print(f"  p99 {_pct(lat, 99):.2f} ms (target <= {p99_t} ms: {_v(met)})")
        if int(rate) <= CPU_TARGET_RATE:
            ok &= _cpu_target(r, wake_us, cold)
    sat = res["saturation"]
    rps = len(sat["lat"]) / sat["seconds"]
    met = _cpu_ms(sat) <= 0.1
    ok &= met
    print(
        f"saturation: {rps:.0f} req/s, CPU per request {_cpu_ms(sat):.3f} ms "
        f"({_split(sat)}; target <= 0.1 ms: {_v(met)})"
    )
    if base is not None:
        b = base["saturation"]
        b_rps = len(b["lat"]) / b["seconds"]
        met = rps >= 0.95 * b_rps
        ok &= met
        print(
            f"  baseline build: {b_rps:.0f} req/s, CPU/req {_cpu_ms(b):.3f} ms; "
            f"ratio {rps / b_rps:.2f}x (target: no lower, 5% noise allowed: {_v(met)})"
        )
    return ok


def compare_runs(label: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Each variant's medians over its runs (interleaved with the others'),
    and their ratios to the first variant's (the reference)."""
    first = next(iter(runs))
    print(f"\n== {label}: median of {len(runs[first])} interleaved runs each")

    def med(values: list[float]) -> float:
        return float(np.median(values))

    rates = list(runs[first][0]["rates"])
    for variant, results in runs.items():
        cells = []
        for rate in rates:
            lats = [[x * 1000 for x in r["rates"][rate]["lat"]] for r in results]
            p50 = med([_pct(lat, 50) for lat in lats])
            p99 = med([_pct(lat, 99) for lat in lats])
            cpu = med([_cpu_ms(r["rates"][rate]) for r in results])
            ours = [r["rates"][rate] for r in results if "generator" in r["rates"][rate]]
            fleet = med([_cpu_ms(x) - _generator_ms(x) for x in ours]) if ours else None
            cells.append((rate, p50, p99, cpu, fleet))
        sats = [r["saturation"] for r in results]
        rps = med([len(x["lat"]) / x["seconds"] for x in sats])
        sat_cpu = med([_cpu_ms(x) for x in sats])
        sat_client = med([_client_ms(x) for x in sats])
        runs_of = {"cells": cells, "rps": rps, "sat_cpu": sat_cpu, "sat_client": sat_client}
        if variant == first:
            ref = runs_of
        text = "; ".join(
            f"{rate}/s p50 {p50:.2f} p99 {p99:.2f} ms CPU/req {cpu:.3f} ms"
            + ("" if fleet is None else f" (the fleet's {fleet:.3f}, less the load generator's)")
            for rate, p50, p99, cpu, fleet in cells
        )
        print(
            f"{variant:>8}: {text}; saturation {rps:.0f} req/s, CPU/req {sat_cpu:.3f} ms "
            f"(client {sat_client:.3f})"
        )
        if variant != first:
            ratios = "; ".join(
                f"{c[0]}/s p50 {c[1] / r[1]:.2f}x p99 {c[2] / r[2]:.2f}x CPU {c[3] / r[3]:.2f}x"
                + ("" if c[4] is None or r[4] is None else f" (the fleet's {c[4] / r[4]:.2f}x)")
                for c, r in zip(cells, ref["cells"], strict=True)
            )
            print(
                f"{'':>8}  vs {first}: {ratios}; saturation {rps / ref['rps']:.2f}x, "
                f"CPU/req {sat_cpu / ref['sat_cpu']:.2f}x "
                f"(client {sat_client / ref['sat_client']:.2f}x)"
            )


def _v(met: bool) -> str:
    return "met" if met else "NOT met"


def _baseline_tree(ref: str, into: Path) -> Path:
    """A worktree of ``ref`` with its own demo models (built by its own code:
    the serving settings of that build)."""
    tree = add_worktree(ref, into)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from worker.zoo import build_all; build_all(sys.argv[1])",
            str(tree / "models"),
        ],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
    )
    return tree


def _host_costs() -> tuple[dict[str, float], dict[str, float]]:
    """What a bare wake-up costs on this host now, and the fleet's codec work
    back to back and spaced as at 150 req/s."""
    wake_us = wakeup_cost.compare(rate=CPU_TARGET_WORK_RATE, seconds=3, rounds=3)
    return wake_us, cold_work.measure(rate=CPU_TARGET_WORK_RATE)


def _reports_wake_cost(args: argparse.Namespace) -> bool:
    """Whether this run prints the 1 ms target's lines, and with them a
    wake-up's cost: a rate of that target, and no comparison of event loops
    or of builds over ``--repeat`` (those print their ratios alone)."""
    loops = [x for x in args.event_loops.split(",") if x]
    compares = loops != ["asyncio"] or bool(args.interpreters)
    compares = compares or bool(args.baseline_ref and args.repeat > 1)
    low = min(args.rates, default=CPU_TARGET_RATE + 1) <= CPU_TARGET_RATE
    return bool(args.wake_cost and low and not compares)


def interleaved(kinds: list[str], repeat: int) -> list[list[str]]:
    """The order of each of ``repeat`` rounds: ``kinds``, then reversed, in
    turn (ABBA), so a host that drifts during the run, or a broker that
    grows slower with each run's topics, favours no kind by going first."""
    return [kinds if i % 2 == 0 else kinds[::-1] for i in range(repeat)]


def compare_interpreters(
    url: str, model: str, args: argparse.Namespace, names: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Each interpreter's runs (worker and client both run by it), ``--repeat``
    of each, interleaved; keyed by the short name ``names`` gives it."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names.values()}
    for order in interleaved(list(names), args.repeat):
        for python in order:
            runs[names[python]].append(measure(ROOT, url, model, args, python=python))
    return runs


def name_interpreters(pythons: list[str]) -> dict[str, str]:
    """A short name for each interpreter (``python-1``, ``python-2``...),
    printed once with what it is; :class:`RuntimeError` for one that cannot
    run this project."""
    names = {}
    for n, python in enumerate(pythons, 1):
        names[python] = f"python-{n}"
        print(f"python-{n}: {python}: {describe_interpreter(python)}")
    return names


def describe_interpreter(python: str) -> str:
    """``python``'s version and build, as :func:`fleet.interpreter.describe`
    reports it from inside it."""
    try:
        out = subprocess.run(
            [python, "-c", "from fleet.interpreter import describe; print(describe())"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:  # no such file, not executable
        raise RuntimeError(f"{python} cannot run this project: {exc.strerror}") from exc
    if out.returncode != 0:
        raise RuntimeError(f"{python} cannot run this project: {out.stderr[-500:]}")
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--brokers", default="amqp,kafka")
    ap.add_argument("--models-to-run", dest="names", default="mlp,digits")
    ap.add_argument("--rates", default="200,1000,4000", help="offered requests/s, comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument(
        "--idle", type=float, default=10.0, help="seconds of idle measurement (0: skip)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of traffic at the first rate before measuring, not counted"
        " (a broker just started is slow while its JIT compiles)",
    )
    ap.add_argument("--in-flight", type=int, default=256, help="requests in flight at saturation")
    ap.add_argument("--baseline-ref", help="git revision to compare saturation against")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    ap.add_argument(
        "--event-loops",
        default="asyncio",
        help="event loops to compare, e.g. asyncio,uvloop: each measured --repeat times, "
        "interleaved, with the medians' ratios to asyncio printed",
    )
    ap.add_argument(
        "--interpreters",
        default="",
        help="Python executables to compare, each with this project installed (a venv"
        " made from that interpreter): worker and client run by each, --repeat times,"
        " interleaved, with the medians' ratios to the first printed",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per event loop; with --baseline-ref, runs of each build, interleaved, "
        "with the medians' ratios printed",
    )
    ap.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the broker library's own request/reply echo at each rate"
        " (benchmarks/library_floor.py) and print the fleet's ratios to it",
    )
    ap.add_argument(
        "--wake-cost",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at the rates of the 1 ms target, measure once what a bare wake-up costs on"
        " this host (benchmarks/wakeup_cost.py) and print what the fleet's wake-ups per"
        " request come to at that cost, and what its codec work for one request costs"
        " back to back and once every 1/150 s (benchmarks/cold_work.py)",
    )
    args = ap.parse_args()
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.interpreters = [x for x in args.interpreters.split(",") if x]
    pythons = args.interpreters
    if pythons and (len(pythons) < 2 or len(set(pythons)) < len(pythons)):
        ap.error("--interpreters takes two or more different Python executables")
    if pythons and (args.event_loops != "asyncio" or args.baseline_ref):
        ap.error(
            "--interpreters compares interpreters alone: not with --event-loops or --baseline-ref"
        )
    if pythons:  # each named once, and one that cannot run refused before any work
        try:
            names = name_interpreters(pythons)
        except RuntimeError as exc:
            ap.error(str(exc))
    else:
        print(f"interpreter (worker and client): {sys.executable}: {interpreter.describe()}")
    from worker.zoo import build_all

    build_all(args.models)
    wake_us, cold = _host_costs() if _reports_wake_cost(args) else (None, None)
    started: list[str] = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = _baseline_tree(args.baseline_ref, Path(tmp)) if args.baseline_ref else None
        try:
            for b in [x for x in args.brokers.split(",") if x]:
                url = broker_url(b, started)
                for model in [m for m in args.names.split(",") if m]:
                    label = f"{model} over {b}, one worker, {os.cpu_count()} CPUs"
                    if pythons:
                        runs = compare_interpreters(url, model, args, names)
                        compare_runs(f"{label}, interpreters", runs)
                        continue
                    loops = [x for x in args.event_loops.split(",") if x]
                    if loops != ["asyncio"]:
                        runs: dict[str, list[dict[str, Any]]] = {x: [] for x in loops}
                        for order in interleaved(loops, args.repeat):
                            for loop in order:
                                runs[loop].append(measure(ROOT, url, model, args, loop))
                        compare_runs(f"{label}, event loops", runs)
                        continue
                    if base_tree is not None and args.repeat > 1:
                        runs = {"baseline": [], "this": []}
                        trees = {"baseline": base_tree, "this": ROOT}
                        for order in interleaved(list(trees), args.repeat):
                            for build in order:
                                runs[build].append(measure(trees[build], url, model, args))
                        compare_runs(f"{label}, this build and --baseline-ref", runs)
                        continue
                    res = measure(ROOT, url, model, args)
                    if args.floor:
                        size = 4 * WIDTH[model] + 64  # the tensor's bytes and a header's
                        # and the protocol's own floor (fleet.transport._amqp_wire, _kafka_wire)
                        kinds = {"floor": b, "wire_floor": f"{b}-wire"}
                        for key, kind in kinds.items():
                            try:
                                res[key] = library_floor.measure(
                                    kind, url, args.rates, args.duration, size
                                )
                            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                                print(f"{kind} floor not measured: {str(exc)[-300:]}")
                    base = measure(base_tree, url, model, args) if base_tree else None
                    ok &= report(label, b, res, base, wake_us, cold)
        finally:
            for name in started:
                subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
            if base_tree is not None:
                remove_worktree(base_tree)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
