"""What the same work costs when it runs once every ``1/rate`` seconds rather
than back to back, on this host now.

    .venv/bin/python benchmarks/cold_work.py [--rate 150] [--runs 300]

At an everyday rate a request's work runs once every few milliseconds, and
in between the caches it needs are taken by whatever else the host runs:
other processes, and interrupts, which on a virtual machine leave the guest
for the hypervisor (a loop that only reads the clock is paused for more than
20 us hundreds of times a second on a busy vCPU here). So the CPU a request
costs at 150 req/s is less what its code does than how much of it must be
fetched again, and that changes with the host's state.

The work measured is the fleet's own codec for one request, both sides: the
client encodes a request frame (a 256-float row), the worker decodes it and
encodes a reply frame (10 floats, stage times on), the client decodes that.
No model, no broker, no event loop. In a new process (``--runs`` each):

- back to back: the work in a loop, its CPU time per run;
- spaced, sleeping: one run every ``1/rate`` s, the process asleep between,
  as a served process is;
- spaced, busy: the same, with the CPU kept busy between (a spin on the
  clock), so that no idle state of the CPU is involved.

A spaced run's CPU time is read around each run (``time.thread_time``) and
the clock reads' own cost, measured the same way around nothing, is taken
out. Prints the medians and the spaced runs' ratios to back to back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.wakeup_cost import at_least, positive  # noqa: E402
from fleet import wire  # noqa: E402
from fleet.contract import Reply, Request, Timings  # noqa: E402
from fleet.tensor import Tensor  # noqa: E402

MODES = ("back_to_back", "sleeping", "busy")


def codec_round_trip() -> Callable[[], Reply]:
    """One request's codec work on both sides, as a call: encode the request
    frame, decode it, encode the reply frame, decode it; returns the reply read."""
    rng = np.random.default_rng(0)
    row = Tensor.from_numpy("input", rng.random((1, 256), dtype=np.float32))
    scores = Tensor.from_numpy("probabilities", rng.random((1, 10), dtype=np.float32))
    req = Request(id="0123456789abcdef", model="mlp", inputs=(row,), deadline=time.time() + 60)
    body = wire.encode_request_body(req)
    timings = Timings(queue_ms=0.1, inference_ms=0.2, batch_size=1, worker_id="w")

    def work() -> Reply:
        frame = wire.encode_requests([wire.with_timeout(body, 30.0)], "fleet.reply.c0")
        got = wire.decode_requests(frame).items[0]
        assert isinstance(got, Request)
        reply = Reply(id=got.id, model=got.model, version="1", outputs=(scores,), timings=timings)
        answer = wire.decode_replies(wire.encode_replies([reply], stages=True)).items[0]
        assert isinstance(answer, Reply)
        return answer

    return work


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _spaced(work: Callable[[], object], gap: float, runs: int, busy: bool) -> list[float]:
    """CPU microseconds of each of ``runs`` runs of ``work``, one every ``gap`` s."""
    wait = _spin if busy else time.sleep
    out: list[float] = []
    for _ in range(runs):
        wait(gap)
        t0 = time.thread_time_ns()
        work()
        out.append((time.thread_time_ns() - t0) / 1000)
    return out


def run(rate: float, runs: int) -> dict[str, float]:
    """CPU microseconds per run of the codec work in each mode, in this
    process: back to back the mean over a loop; spaced the median of the
    runs, less the median of the clock reads' own cost."""
    work = codec_round_trip()
    for _ in range(200):  # past first-use costs
        work()
    t0 = time.thread_time_ns()
    for _ in range(runs * 10):
        work()
    out = {"back_to_back": (time.thread_time_ns() - t0) / 1000 / (runs * 10)}
    gap = 1.0 / rate
    for mode in MODES[1:]:
        busy = mode == "busy"
        clock = statistics.median(_spaced(lambda: None, gap, max(1, runs // 3), busy))
        spaced = statistics.median(_spaced(work, gap, runs, busy))
        out[mode] = max(0.0, spaced - clock)
    return out


def measure(rate: float = 150.0, runs: int = 300) -> dict[str, float]:
    """:func:`run` in a new process: nothing of the caller's warms it or cools it."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--rate", str(rate)]
    argv += ["--runs", str(runs), "--json"]
    timeout = 60 + 3 * runs / rate
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cold work run failed: {out.stderr[-2000:]}")
    return {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def describe(r: dict[str, float], rate: float) -> str:
    """One line: the three figures and the spaced ones' ratios to back to back."""
    hot = r["back_to_back"] or float("nan")
    return (
        f"{r['back_to_back']:.1f} us back to back; once every {1000 / rate:.2f} ms: "
        f"{r['sleeping']:.1f} us asleep between ({r['sleeping'] / hot:.1f}x), "
        f"{r['busy']:.1f} us busy between ({r['busy'] / hot:.1f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=positive, default=150.0, help="spaced runs per second")
    ap.add_argument("--runs", type=at_least(3), default=300, help="spaced runs per mode")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # this process, JSON
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(run(args.rate, args.runs)))
        return 0
    r: dict[str, Any] = measure(args.rate, args.runs)
    print(f"the fleet's codec work for one request (both sides): {describe(r, args.rate)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
