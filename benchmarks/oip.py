"""OIP over HTTP and gRPC against the queue path, on one worker, in one run.

    .venv/bin/python benchmarks/oip.py [--duration 10] [--in-flight 256]

Model ``mlp`` (one row per request), one ``fleet worker`` process serving both
RabbitMQ (FLEET_TEST_AMQP_URL, else ``scripts/rabbitmq.sh`` starts one) and OIP
over HTTP and gRPC. Measured one after the other:

1. raw ONNX Runtime in this process (one row per call, and full batches): the baseline;
2. the queue path: ``producer.Client`` over RabbitMQ, ``--in-flight`` requests in
   flight (closed loop: saturation), then open loop at half that rate; the
   client coalesces concurrent requests into broker messages (up to 64 each),
   which no OIP call does, so saturation is also measured with one request per
   message;
3. OIP HTTP with the binary tensor data extension (a lean aiohttp client sending
   prepared bodies), the same two runs;
4. OIP gRPC, ``ModelInfer`` with ``raw_input_contents`` (a lean grpc.aio client
   sending prepared requests), the same two runs;
5. mixed: half the in-flight requests on each path at once.

The clients run in their own processes. Mean batch sizes come from the worker's
``/metrics``, before and after each run. Prints requests/s, p50 and p99, the
ratios against raw ONNX Runtime and HTTP against the queue, and whether the
targets hold: HTTP and gRPC throughput >= 0.8x the queue path's; p99 at half load <= 50 ms;
mixed load served with a mean batch >= 16.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import (  # noqa: E402
    MODEL,
    WIDTH,
    Row,
    _drive,
    _pct,
    _service,
    bench_raw_ort,
    stop_process,
)
from fleet.worker_command import worker_argv, worker_command  # noqa: E402
from fleetctl.demo import wait_model_served  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(pool: int = 256) -> list[tuple[bytes, str]]:
    """Prepared binary-extension bodies of one row each, and their header lengths."""
    rows = np.random.default_rng(0).standard_normal((pool, WIDTH)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, WIDTH],
                    "parameters": {"binary_data_size": 4 * WIDTH},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return [(header + r.tobytes(), str(len(header))) for r in rows]


async def _run_load(
    call: Callable[[int], Awaitable[bool]], duration: float, in_flight: int, rate: float | None
) -> tuple[list[float], int, float]:
    """Closed loop (``rate`` None: ``in_flight`` callers back to back) or open
    loop at ``rate`` with at most ``in_flight`` outstanding; latencies of the
    calls that succeeded, the failures, the seconds it took."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(1 << 62))
    end = time.perf_counter() + duration
    started = time.perf_counter()

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        if await call(next(counter)):
            lat.append(time.perf_counter() - t0)
        else:
            errors += 1

    async def closed_loop() -> None:
        while time.perf_counter() < end:
            await one()

    if rate is None:
        await asyncio.gather(*(closed_loop() for _ in range(in_flight)))
    else:
        tasks: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()
        while next_at < end:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) < in_flight:
                task = asyncio.get_running_loop().create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += 1.0 / rate
        await asyncio.gather(*tasks)
    return lat, errors, time.perf_counter() - started


async def _http_load(
    url: str, duration: float, in_flight: int, rate: float | None
) -> tuple[list[float], int, float]:
    import aiohttp

    bodies = _bodies()
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def call(i: int) -> bool:
            body, length = bodies[i % len(bodies)]
            headers = {"Inference-Header-Content-Length": length}
            try:
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        return await _run_load(call, duration, in_flight, rate)


def _grpc_requests(pool: int = 256) -> list[bytes]:
    """Prepared ``ModelInfer`` requests of one row each, serialized, with the
    tensor in ``raw_input_contents`` (what Triton's clients send)."""
    from worker.oip_proto import oip_v2_pb2 as pb

    rows = np.random.default_rng(0).standard_normal((pool, WIDTH)).astype(np.float32)
    out = []
    for r in rows:
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="input", datatype="FP32", shape=[1, WIDTH])
        req.raw_input_contents.append(r.tobytes())
        out.append(req.SerializeToString())
    return out


async def _grpc_load(
    address: str, duration: float, in_flight: int, rate: float | None
) -> tuple[list[float], int, float]:
    import grpc

    requests = _grpc_requests()
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def call(i: int) -> bool:
            try:
                await infer(requests[i % len(requests)])
            except grpc.aio.AioRpcError:
                return False
            return True

        return await _run_load(call, duration, in_flight, rate)


_LOADS = {"http": _http_load, "grpc": _grpc_load}


def _load_proc(
    kind: str, url: str, duration: float, in_flight: int, rate: float | None, q: Any
) -> None:
    q.put(asyncio.run(_LOADS[kind](url, duration, in_flight, rate)))


def _drive_http(
    url: str, duration: float, in_flight: int, rate: float | None, kind: str = "http"
) -> Row:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load_proc, args=(kind, url, duration, in_flight, rate, q))
    p.start()
    lat, errors, seconds = q.get(timeout=duration + 180)
    p.join(30)
    row = Row("", len(lat) / seconds, _pct(lat, 50), _pct(lat, 99))
    row.extra = {"errors": errors, "answered": len(lat)}
    return row


def _batches(metrics_url: str) -> tuple[float, float]:
    """The worker's batch size histogram: (sum of rows, batches) for the model."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = count = 0.0
    for name, value in re.findall(
        r"^fleet_worker_batch_size_(sum|count)\{[^}]*\} (\S+)$", text, re.M
    ):
        if name == "sum":
            total += float(value)
        else:
            count += float(value)
    return total, count


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    rows, batches = after[0] - before[0], after[1] - before[1]
    return rows / batches if batches else 0.0


def _mixed(broker: str, url: str, duration: float, in_flight: int) -> tuple[Row, Row]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load_proc, args=("http", url, duration, in_flight // 2, None, q))
    p.start()
    queue_row = _drive(broker, duration, in_flight // 2, None, 1)
    lat, errors, seconds = q.get(timeout=duration + 180)
    p.join(30)
    http_row = Row("", len(lat) / seconds, _pct(lat, 50), _pct(lat, 99))
    http_row.extra = {"errors": errors, "answered": len(lat)}
    return queue_row, http_row


def bench_paths(broker: str, models: Path, duration: float, in_flight: int) -> list[Row]:
    oip_port, grpc_port, http_port = _free_port(), _free_port(), _free_port()
    worker = subprocess.Popen(
        worker_argv(
            broker=broker,
            models=models,
            worker_id="bench-oip",
            http_port=http_port,
            command=worker_command(log_level="WARNING"),
            extra=[
                *("--oip-port", str(oip_port), "--oip-grpc-port", str(grpc_port)),
                *("--max-sync-requests", str(4 * in_flight)),
            ],
        ),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{oip_port}/v2/models/{MODEL}/infer"
    grpc_address = f"127.0.0.1:{grpc_port}"
    metrics = f"http://127.0.0.1:{http_port}/metrics"
    rows: list[Row] = []

    def measured(name: str, run: Any) -> Any:
        before = _batches(metrics)
        out = run()
        mean = _mean_batch(before, _batches(metrics))
        for row in out if isinstance(out, tuple) else (out,):
            row.extra["mean_batch"] = mean
        print(f"  measured {name}", file=sys.stderr)
        return out

    try:
        asyncio.run(wait_model_served(broker, MODEL))
        _drive(broker, 2, 32, None, 1)  # warm both paths
        _drive_http(url, 2, 32, None)
        _drive_http(grpc_address, 2, 32, None, "grpc")
        for label, run in (
            ("queue (RabbitMQ)", lambda rate: _drive(broker, duration, in_flight, rate, 1)),
            ("OIP HTTP binary", lambda rate: _drive_http(url, duration, in_flight, rate)),
            (
                "OIP gRPC raw",
                lambda rate: _drive_http(grpc_address, duration, in_flight, rate, "grpc"),
            ),
        ):
            sat = measured(f"{label}, saturation", lambda run=run: run(None))
            sat.name, sat.note = f"{label}, saturation", f"{in_flight} in flight"
            half = measured(f"{label}, half", lambda run=run, sat=sat: run(sat.rps / 2))
            half.name, half.note = f"{label}, half load", f"{sat.rps / 2:.0f} req/s offered"
            rows += [sat, half]
        one = measured(
            "queue, one request per message",
            lambda: _drive(broker, duration, in_flight, None, 1, max_batch=1),
        )
        one.name, one.note = "queue, 1 request/message, sat.", f"{in_flight} in flight"
        rows.append(one)
        q_row, h_row = measured("mixed", lambda: _mixed(broker, url, duration, in_flight))
        q_row.name, q_row.note = "mixed: queue part", f"{in_flight // 2} in flight"
        h_row.name, h_row.note = "mixed: HTTP part", f"{in_flight // 2} in flight"
        rows += [q_row, h_row]
        return rows
    finally:
        stop_process(worker, 60)


def _report(rows: list[Row]) -> bool:
    by = {r.name: r for r in rows}
    base = by["raw ORT, batch 64"].rps
    print(f"{'path':<34} {'req/s':>9} {'x raw b64':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}")
    for r in rows:
        batch = r.extra.get("mean_batch", float("nan"))
        print(
            f"{r.name:<34} {r.rps:>9.0f} {r.rps / base:>9.3f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
            f" {batch:>6.1f}  {r.note}  errors {int(r.extra.get('errors', 0))}"
        )
    queue, http = by["queue (RabbitMQ), saturation"], by["OIP HTTP binary, saturation"]
    ratio = http.rps / queue.rps
    grpc_ratio = by["OIP gRPC raw, saturation"].rps / queue.rps
    halves = [
        by[f"{p}, half load"] for p in ("queue (RabbitMQ)", "OIP HTTP binary", "OIP gRPC raw")
    ]
    mixed = by["mixed: HTTP part"].extra["mean_batch"]
    single = by["queue, 1 request/message, sat."].rps
    print(
        f"  against the queue path without coalescing (one request per message, as each "
        f"OIP call is one request): HTTP {http.rps / single:.2f}x, "
        f"gRPC {by['OIP gRPC raw, saturation'].rps / single:.2f}x"
    )
    checks = [
        (f"HTTP binary throughput >= 0.8x the queue path's: {ratio:.2f}x", ratio >= 0.8),
        (f"gRPC throughput >= 0.8x the queue path's: {grpc_ratio:.2f}x", grpc_ratio >= 0.8),
        *(
            (f"p99 at half load <= 50 ms, {r.name}: {r.p99_ms:.1f} ms", r.p99_ms <= 50)
            for r in halves
        ),
        (f"mixed load mean batch >= 16: {mixed:.1f}", mixed >= 16),
    ]
    for text, met in checks:
        print(f"  {'MET' if met else 'NOT MET'}: {text}")
    return all(met for _, met in checks)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--in-flight", type=int, default=256, help="requests in flight")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    args = ap.parse_args()

    from worker.zoo import build_all

    build_all(args.models)
    started: list[str] = []
    broker = _service("rabbitmq", "FLEET_TEST_AMQP_URL", started)
    try:
        rows = bench_raw_ort(args.models / MODEL / "1" / "model.onnx", args.duration)
        rows += bench_paths(broker, args.models, args.duration, args.in_flight)
    finally:
        for name in started:
            subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
    _report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
