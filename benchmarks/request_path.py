"""Throughput and latency of the request path, against baselines measured in the same run.

    .venv/bin/python benchmarks/request_path.py [--duration 10] [--brokers amqp,kafka]

Runs, one after the other in one process tree:

1. raw ONNX Runtime in this process (one row per call, and full batches: the ceiling);
2. the fleet over each broker: one ``fleet worker`` process, ``--in-flight``
   requests in flight (closed loop) to find saturation, then an open-loop run at
   half that rate to measure latency at an honest load;
3. a Celery worker (RabbitMQ broker, ``rpc://`` results, default settings) running
   the same model on the same broker, driven with the same number in flight.

Prints requests/s, p50 and p99 for each, the ratios, the worker's resident
memory, and whether the targets hold. Brokers come from FLEET_TEST_AMQP_URL /
FLEET_TEST_KAFKA_URL, else the local scripts start them (and stop them after).
Traffic goes to loopback only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.worker_command import worker_argv, worker_command  # noqa: E402
from fleetctl.demo import wait_model_served  # noqa: E402

MODEL = "mlp"
WIDTH = 256


@dataclass
class Row:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(lat, q) * 1e3) if lat else float("nan")


# ----------------------------------------------------------------------------- baselines


def bench_raw_ort(model_path: Path, duration: float) -> list[Row]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    for batch in (1, 64):
        x = rng.standard_normal((batch, WIDTH)).astype(np.float32)
        lat: list[float] = []
        end = time.perf_counter() + duration / 2
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            sess.run(None, {"input": x})
            lat.append(time.perf_counter() - t0)
        rps = batch * len(lat) / sum(lat)
        rows.append(Row(f"raw ORT, batch {batch}", rps, _pct(lat, 50), _pct(lat, 99), "in-process"))
    return rows


def bench_celery(amqp_url: str, model_path: Path, duration: float, in_flight: int) -> Row:
    env = {
        **os.environ,
        "BENCH_AMQP_URL": amqp_url,
        "BENCH_MODEL": str(model_path),
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update({"BENCH_AMQP_URL": amqp_url, "BENCH_MODEL": str(model_path)})
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.celery_app",
            "worker",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from benchmarks.celery_app import app, infer

        app.conf.broker_url = amqp_url
        x = np.random.default_rng(0).standard_normal((256, WIDTH)).astype(np.float32)
        payloads = [row.tolist() for row in x]
        infer.delay(payloads[0]).get(timeout=120)  # worker up, model loaded
        lat: list[float] = []
        window: list[tuple[Any, float]] = []
        i = 0
        t_start = time.perf_counter()
        end = t_start + duration
        while time.perf_counter() < end or window:
            while time.perf_counter() < end and len(window) < in_flight:
                window.append((infer.delay(payloads[i % len(payloads)]), time.perf_counter()))
                i += 1
            res, t0 = window.pop(0)
            res.get(timeout=60)
            lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_start
        return Row(
            "Celery (rpc://), same broker",
            len(lat) / elapsed,
            _pct(lat, 50),
            _pct(lat, 99),
            f"{in_flight} in flight",
        )
    finally:
        stop_process(worker, 30)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM (a worker drains), and SIGKILL if it has not exited within ``grace`` s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()


# ----------------------------------------------------------------------------- fleet


def _client_proc(
    broker: str, duration: float, in_flight: int, rate: float | None, q: Any, max_batch: int = 64
) -> None:
    from producer import Client
    from producer.loadgen import drive, random_inputs

    async def run() -> tuple[Any, float]:
        async with Client(broker, timeout=30, max_in_flight=100_000, max_batch=max_batch) as client:
            cpu = time.process_time()
            result = await drive(
                client,
                MODEL,
                random_inputs(WIDTH),
                duration=duration,
                concurrency=in_flight,
                rate=rate,
                timeout=30,
            )
            return result, time.process_time() - cpu

    r, cpu = asyncio.run(run())
    q.put((r.latencies, r.batch_sizes, dict(r.errors), r.sent, r.seconds, cpu))


def _drive(
    broker: str,
    duration: float,
    in_flight: int,
    rate: float | None,
    clients: int,
    max_batch: int = 64,
) -> Row:
    """``clients`` client processes; ``max_batch`` requests at most per
    broker message (1: no coalescing)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_proc,
            args=(
                broker,
                duration,
                max(1, in_flight // clients),
                rate / clients if rate else None,
                q,
                max_batch,
            ),
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    parts = [q.get(timeout=duration + 180) for _ in procs]
    for p in procs:
        p.join(30)
    lat = [x for part in parts for x in part[0]]
    batches = [x for part in parts for x in part[1]]
    errors = sum(sum(part[2].values()) for part in parts)
    seconds = max(part[4] for part in parts)
    row = Row("", len(lat) / seconds, _pct(lat, 50), _pct(lat, 99))
    row.extra = {
        "errors": errors,
        "mean_batch": float(np.mean(batches)) if batches else 0.0,
        "client_cpu_s": sum(part[5] for part in parts),
        "answered": len(lat),
    }
    return row


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's threads so far: each is a
    wait (for a socket, a timer, a lock) that an event ended."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def listener_pid(url: str) -> int | None:
    """The process listening on ``url``'s port on this host (a broker on
    loopback), where it can be found in /proc; None elsewhere."""
    port = urlsplit(url).port
    if port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rpartition(":")[2], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{f[9]}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(fd_dir.parent.name)
    return None


def _with_cpu(row: Row, worker_cpu_s: float) -> Row:
    """CPU milliseconds per answered request, worker and client processes."""
    n = max(1, int(row.extra["answered"]))
    row.extra["worker_cpu_ms"] = 1000 * worker_cpu_s / n
    row.extra["client_cpu_ms"] = 1000 * row.extra["client_cpu_s"] / n
    return row


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def served(broker: str, models: Path, worker_id: str = "bench") -> Iterator[subprocess.Popen[Any]]:
    """One ``fleet worker`` process serving ``models`` on ``broker``, once it
    serves :data:`MODEL`; drained (SIGTERM) at the end."""
    worker = subprocess.Popen(
        worker_argv(
            broker=broker,
            models=models,
            worker_id=worker_id,
            command=worker_command(log_level="WARNING"),
        ),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        asyncio.run(wait_model_served(broker, MODEL))
        yield worker
    finally:
        stop_process(worker, 60)


def bench_fleet(
    label: str, broker: str, models: Path, duration: float, in_flight: int, clients: int
) -> list[Row]:
    with served(broker, models) as worker:
        _drive(broker, 2, 32, None, 1)  # warm the path
        before = _cpu_s(worker.pid)
        sat = _drive(broker, duration, in_flight, None, clients)
        after = _cpu_s(worker.pid)
        sat = _with_cpu(sat, after - before)
        sat.name = f"fleet over {label}, saturation"
        sat.note = f"{in_flight} in flight, batch {sat.extra['mean_batch']:.1f}"
        half = _with_cpu(
            _drive(broker, duration, in_flight, sat.rps / 2, clients), _cpu_s(worker.pid) - after
        )
        half.name = f"fleet over {label}, half load"
        half.note = f"{sat.rps / 2:.0f} req/s offered"
        rss = _rss_mb(worker.pid)
        sat.extra["rss_mb"] = half.extra["rss_mb"] = rss
        return [sat, half]


# ----------------------------------------------------------------------------- services


def _service(name: str, var: str, started: list[str]) -> str:
    url = os.environ.get(var)
    if url:
        return url
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / f"{name}.sh"), "start"],
        check=True,
        capture_output=True,
        text=True,
    )
    started.append(name)
    found = re.findall(r"(?:amqps?|kafka)://\S+", out.stdout)
    if not found:
        raise RuntimeError(f"scripts/{name}.sh start printed no URL")
    return str(found[-1])


BROKER_SERVICES = {
    "amqp": ("rabbitmq", "FLEET_TEST_AMQP_URL"),
    "kafka": ("kafka", "FLEET_TEST_KAFKA_URL"),
}
"""A broker's local script (``scripts/NAME.sh``) and the variable whose URL wins over it."""


def broker_url(broker: str, started: list[str]) -> str:
    """The URL of ``broker`` (``amqp`` or ``kafka``): its variable's, else
    that of a local server started now (its script named in ``started``)."""
    name, var = BROKER_SERVICES[broker]
    return _service(name, var, started)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--in-flight", type=int, default=256, help="requests in flight")
    ap.add_argument("--clients", type=int, default=1, help="client processes sharing the load")
    ap.add_argument("--brokers", default="amqp,kafka", help="comma-separated: amqp, kafka")
    ap.add_argument("--no-celery", action="store_true", help="skip the Celery baseline")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    args = ap.parse_args()

    from worker.zoo import build_all

    build_all(args.models)
    model_path = args.models / MODEL / "1" / "model.onnx"
    started: list[str] = []
    rows: list[Row] = []
    try:
        rows += bench_raw_ort(model_path, args.duration)
        brokers = [b for b in args.brokers.split(",") if b]
        urls = {}
        if "amqp" in brokers or not args.no_celery:
            urls["amqp"] = _service("rabbitmq", "FLEET_TEST_AMQP_URL", started)
        if "kafka" in brokers:
            urls["kafka"] = _service("kafka", "FLEET_TEST_KAFKA_URL", started)
        for b in brokers:
            label = {"amqp": "RabbitMQ", "kafka": "Kafka"}[b]
            rows += bench_fleet(
                label, urls[b], args.models, args.duration, args.in_flight, args.clients
            )
        if not args.no_celery:
            celery_url = (
                urls["amqp"].rstrip("/") + "//" if urls["amqp"].endswith(":5672/") else urls["amqp"]
            )
            rows.append(bench_celery(celery_url, model_path, args.duration, args.in_flight))
    finally:
        for name in started:
            subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)

    print(f"\nmodel {MODEL} (FP32 MLP 256-1024-1024-1024-10), {os.cpu_count()} CPUs\n")
    print(f"{'run':38} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}  note")
    for r in rows:
        print(f"{r.name:38} {r.rps:>10.0f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f}  {r.note}")
    by = {r.name: r for r in rows}
    celery = by.get("Celery (rpc://), same broker")
    raw1 = by["raw ORT, batch 1"]
    print()
    ok = True

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    for label in ("RabbitMQ", "Kafka"):
        sat = by.get(f"fleet over {label}, saturation")
        half = by.get(f"fleet over {label}, half load")
        if sat is None or half is None:
            continue
        print(f"fleet over {label}: {sat.rps / raw1.rps:.2f}x raw ORT one-row calls")
        if celery:
            ratio = sat.rps / celery.rps
            ok &= ratio >= 10
            print(f"  {ratio:.1f}x Celery's requests/s (target >= 10x: {verdict(ratio >= 10)})")
        ok &= half.p99_ms <= 100
        print(
            f"  p99 at half saturation {half.p99_ms:.1f} ms "
            f"(target <= 100 ms: {verdict(half.p99_ms <= 100)})"
        )
        rss = sat.extra["rss_mb"]
        ok &= rss <= 300
        print(
            f"  worker resident memory {rss:.0f} MB with both demo models "
            f"(target <= 300 MB: {verdict(rss <= 300)})"
        )
        for row, what in ((sat, "at saturation"), (half, "at half load")):
            print(
                f"  CPU per request {what}: worker {row.extra['worker_cpu_ms']:.3f} ms, "
                f"client {row.extra['client_cpu_ms']:.3f} ms (model included)"
            )
        print(f"  errors: {int(sat.extra['errors'] + half.extra['errors'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
