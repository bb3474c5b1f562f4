"""Calls per request at an everyday rate: a figure the host's state does not move.

    .venv/bin/python benchmarks/calls.py [--brokers kafka,amqp] [--models-to-run mlp]
        [--rate 150] [--duration 10] [--baseline-ref REF]

The CPU per request at 150 req/s follows the host (``latency.py``): on a
virtual machine work that waits between requests costs several times what it
costs back to back (``cold_work.py``), and the same build measured 1.17 and
1.68 ms within an hour. How many calls a request takes does not. This starts
one worker and one client per broker and model, as ``latency.py`` does, and
counts with a profile hook (``sys.setprofile``) every call of a Python
function (a coroutine's every resume included) and every call of a built-in
in the event loop's thread of each:

- the worker's between two signals (SIGUSR2) sent around the client's run;
- the client's over its run of open-loop arrivals at ``--rate`` (seeded,
  after a warm-up of ``--warmup`` seconds that is not counted), less the load
  generator's own: the same arrivals against a client that answers at once.

Printed per request answered. With ``--baseline-ref``, the same against a
worker and client of that revision in the same run, and the ratios. Brokers
come from FLEET_TEST_AMQP_URL / FLEET_TEST_KAFKA_URL, else the local scripts
start them. Traffic goes to loopback only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.latency import COUNT_CALLS, WIDTH, _baseline_tree, _client  # noqa: E402
from benchmarks.request_path import BROKER_SERVICES, broker_url, stop_process  # noqa: E402
from benchmarks.revisions import remove_worktree  # noqa: E402
from benchmarks.wakeup_cost import positive  # noqa: E402
from fleet.stages import CLIENT_STAGES  # noqa: E402
from fleet.worker_command import worker_argv  # noqa: E402
from fleetctl.demo import wait_model_served  # noqa: E402

SIGNAL = signal.SIGUSR2

# Runs a module as ``python -m`` would, counting the calls of its main thread
# between two SIGUSR2s and writing them, as JSON, to the file named first.
# Only the standard library: it runs in whichever tree is measured.
HOOK = (
    r"""
import json, runpy, signal, sys

out, module, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
"""
    + COUNT_CALLS
    + r"""

def toggle(signum, frame):
    if sys.getprofile() is None:
        calls[:] = [0, 0]
        sys.setprofile(count)
        return
    sys.setprofile(None)
    # This handler's own call is counted unless it ran inside the hook (the
    # signal fell during a call of count(), where nothing is counted): take
    # it out, so the counts hold the module's calls alone either way.
    if frame is None or frame.f_code is not count.__code__:
        calls[0] -= 1
    with open(out + ".part", "w") as f:
        json.dump({"python": calls[0], "builtin": calls[1]}, f)
    import os
    os.replace(out + ".part", out)


signal.signal(signal.SIGUSR2, toggle)
sys.argv = [module, *argv]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
)


def hooked(out: Path, module: str, argv: list[str]) -> list[str]:
    """The command that runs ``python -m module argv`` with the call counter."""
    return [sys.executable, "-c", HOOK, str(out), module, *argv]


def read_counts(out: Path, timeout: float = 30.0) -> dict[str, int]:
    """The counts a hooked process wrote once told to stop counting."""
    end = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > end:
            raise RuntimeError(f"no call counts in {out} after {timeout:.0f} s")
        time.sleep(0.05)
    return {k: int(v) for k, v in json.loads(out.read_text()).items()}


def per_request(calls: dict[str, int], answered: int) -> dict[str, float]:
    """Calls per answered request, each kind and their sum."""
    n = max(1, answered)
    out = {k: v / n for k, v in calls.items()}
    out["all"] = sum(calls.values()) / n
    return out


def measure(tree: Path, url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One worker and client of ``tree``: the worker's calls per request, the
    client's and the load generator's alone."""
    base = {"broker": url, "model": model, "width": WIDTH[model], "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker-calls.json"
        command = hooked(out, "fleetctl", ["--log-level", "WARNING", "worker"])
        models = args.models if tree == ROOT else tree / "models"
        argv = worker_argv(broker=url, models=models, worker_id="calls", command=command)
        worker = subprocess.Popen(argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
        try:
            asyncio.run(wait_model_served(url, model))
            _client(tree, **base, mode="open", rate=args.rate, duration=args.warmup)
            worker.send_signal(SIGNAL)
            run = _client(
                tree, **base, mode="open", rate=args.rate, duration=args.duration, count_calls=True
            )
            worker.send_signal(SIGNAL)
            counts = read_counts(out)
        finally:
            stop_process(worker, 60)
    null = _client(
        tree,
        **base,
        mode="null",
        stages=len(CLIENT_STAGES),
        rate=args.rate,
        duration=args.duration,
        count_calls=True,
    )
    answered = len(run["lat"])
    return {
        "answered": answered,
        "worker": per_request(counts, answered),
        "client": per_request(run["calls"], answered),
        "generator": per_request(null["calls"], len(null["lat"])),
    }


def own(r: dict[str, Any], side: str) -> dict[str, float]:
    """A side's calls per request: the worker's, or the client's less the
    load generator's."""
    if side == "worker":
        return dict(r["worker"])
    return {k: r["client"][k] - r["generator"][k] for k in r["client"]}


def report(label: str, runs: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {label}: calls per request answered (Python / built-in / all)")
    for build, r in runs.items():
        cells = []
        for side in ("worker", "client"):
            c = own(r, side)
            cells.append(f"{side} {c['python']:.0f} / {c['builtin']:.0f} / {c['all']:.0f}")
        both = own(r, "worker")["all"] + own(r, "client")["all"]
        print(f"  {build:>8}: {'; '.join(cells)}; both {both:.0f} ({r['answered']} requests)")
    if "baseline" in runs:
        this, base = runs["this"], runs["baseline"]
        ratios = []
        for side in ("worker", "client"):
            ratios.append(f"{side} {own(this, side)['all'] / own(base, side)['all']:.2f}x")
        both = sum(own(this, s)["all"] for s in ("worker", "client"))
        both_base = sum(own(base, s)["all"] for s in ("worker", "client"))
        print(f"  this vs baseline: {', '.join(ratios)}, both {both / both_base:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--brokers", default="kafka,amqp")
    ap.add_argument("--models-to-run", dest="names", default="mlp")
    ap.add_argument("--rate", type=positive, default=150.0, help="offered requests/s")
    ap.add_argument("--duration", type=positive, default=10.0, help="seconds counted")
    ap.add_argument("--warmup", type=positive, default=3.0, help="seconds before, not counted")
    ap.add_argument("--baseline-ref", help="git revision to count the same against")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    args = ap.parse_args(argv)
    brokers = [b for b in args.brokers.split(",") if b]
    unknown = [b for b in brokers if b not in BROKER_SERVICES]
    if unknown:
        ap.error(f"unknown broker {unknown[0]!r}: amqp or kafka")
    from worker.zoo import build_all

    build_all(args.models)
    started: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = _baseline_tree(args.baseline_ref, Path(tmp)) if args.baseline_ref else None
        try:
            for b in brokers:
                url = broker_url(b, started)
                for model in [m for m in args.names.split(",") if m]:
                    runs = {}
                    if base_tree is not None:
                        runs["baseline"] = measure(base_tree, url, model, args)
                    runs["this"] = measure(ROOT, url, model, args)
                    report(f"{model} over {b} at {args.rate:g} req/s, one worker", runs)
        finally:
            for name in started:
                subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
            if base_tree is not None:
                remove_worktree(base_tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
