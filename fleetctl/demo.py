"""``fleet demo``: workers plus a traffic run with a live display and a summary.

On ``memory://`` everything runs in this process (no services needed). On a
real broker the workers run as ``fleet worker`` subprocesses, the broker URL
in their environment (never on their command lines, which ``ps`` shows).

The traffic goes through the broker, or with ``--http`` over the workers'
Open Inference Protocol HTTP ports (the broker then carries only their
heartbeats), spread round-robin across them as a load balancer would. A
worker process reports its port in its "worker ready" log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fleet.errors import ConfigError, FleetError, ModelNotFound
from fleet.redact import redact_url
from fleet.settings import BROKER, resolve_password
from fleet.worker_command import worker_command, worker_launch
from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers

if TYPE_CHECKING:
    from producer.loadgen import Inputs, LoadResult, OipBalancer

OIP_HOST = "127.0.0.1"  # where the demo's workers serve the OIP over HTTP
READY_TIMEOUT = 120.0  # seconds a worker process may take to load, warm and report ready
_LOG_LINE_LIMIT = 1 << 20  # bytes of one worker log line (a traceback is one JSON line)
_QUIET_LEVELS = frozenset({"debug", "info"})  # worker log lines not passed on


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run workers and drive traffic through them, with live progress",
        description="One command, no services needed: an embedded broker, the demo models "
        "(built if missing), workers, and a traffic run with a live display and a summary. "
        "The traffic goes through the broker, or with --http over the workers' Open "
        "Inference Protocol HTTP ports.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--broker", default="memory://demo", help="broker URL")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model repository")
    p.add_argument("--model", default="digits", help="model to drive traffic to")
    p.add_argument("--workers", type=int, default=1, help="workers to start")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument(
        "--rate", type=float, default=None, help="offered requests/s (default: as fast as answered)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    p.add_argument(
        "--http",
        action="store_true",
        help="send the traffic over the Open Inference Protocol's HTTP (POST "
        "/v2/models/MODEL/infer, binary tensor data) to each worker's OIP port instead of "
        "through the broker, which then carries only heartbeats; requests go round-robin "
        "across the workers, like a load balancer, and a 503 (worker full) is retried on "
        "the next worker",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from worker.tuning import tune_process_for_serving

    if args.broker.startswith("memory://"):
        tune_process_for_serving()  # the workers run in this process
    summary = asyncio.run(
        run_demo(
            broker=args.broker,
            models=args.models,
            model=args.model,
            workers=args.workers,
            duration=args.duration,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
            http=args.http,
        )
    )
    return 0 if summary.lost == 0 else 1


def _input_width(models: Path, model: str) -> int:
    import onnx

    versions = sorted((models / model).glob("*/model.onnx"))
    if not versions:
        raise ModelNotFound(f"no model {model!r} under {models}")
    graph = onnx.load(str(versions[-1]), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ConfigError(f"the demo drives models with one [n, width] input; {model!r} is not one")
    return int(dims[1].dim_value)


def _oip_url(port: int) -> str:
    return f"http://{OIP_HOST}:{port}"


@contextlib.asynccontextmanager
async def _workers(
    broker: str, models: Path, count: int, *, http: bool = False
) -> AsyncIterator[list[str]]:
    """Runs ``count`` workers; yields their OIP HTTP URLs with ``http`` (else none)."""
    if broker.startswith("memory://"):
        async with _in_process_workers(broker, models, count, http=http) as urls:
            yield urls
        return
    procs = await spawn_workers(
        broker,
        models,
        count,
        command=worker_command(log_level="INFO" if http else "WARNING"),
        extra=["--oip-host", OIP_HOST, "--oip-port", "0"] if http else (),
        stderr=asyncio.subprocess.PIPE if http else None,
    )
    logs = WorkerLogs(procs, [f"demo-{i}" for i in range(count)]) if http else None
    try:
        if logs is not None:
            yield [_oip_url(port) for port in await logs.oip_ports(READY_TIMEOUT)]
        else:
            await wait_model_served(broker, _first_model(models))
            yield []
    finally:
        await _stop_processes(procs)
        if logs is not None:
            await logs.close()


@contextlib.asynccontextmanager
async def _in_process_workers(
    broker: str, models: Path, count: int, *, http: bool
) -> AsyncIterator[list[str]]:
    from worker.service import Worker, WorkerSettings

    workers = [
        Worker(
            WorkerSettings(
                broker=broker,
                models=models,
                worker_id=f"demo-{i}",
                http_port=None,
                oip_host=OIP_HOST,
                oip_port=0 if http else None,
            )
        )
        for i in range(count)
    ]
    await asyncio.gather(*(w.start() for w in workers))
    try:
        yield [_oip_url(w.oip_port) for w in workers if w.oip_port is not None]
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


async def _stop_processes(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            p.terminate()
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 60)
        except TimeoutError:
            p.kill()
            await p.wait()


async def spawn_workers(
    broker: str,
    models: Path,
    count: int,
    *,
    command: list[str] | None = None,
    extra: Sequence[str] = (),
    stderr: int | None = None,
) -> list[asyncio.subprocess.Process]:
    """Start ``count`` worker processes (``demo-0``, ...); the broker URL goes
    in their environment, not on their command lines. ``extra`` flags follow
    the worker's own; ``stderr`` (e.g. ``asyncio.subprocess.PIPE``) is where
    their logs go (default: this process's stderr)."""
    command = command or worker_command(log_level="WARNING")
    launches = [
        worker_launch(
            broker=broker, models=models, worker_id=f"demo-{i}", command=command, extra=extra
        )
        for i in range(count)
    ]
    return [
        await asyncio.create_subprocess_exec(
            *w.argv, env={**os.environ, **w.env}, stderr=stderr, limit=_LOG_LINE_LIMIT
        )
        for w in launches
    ]


class WorkerLogs:
    """Follows worker processes' logs (JSON lines on a piped stderr): each
    one's "worker ready" line names its OIP HTTP port. Lines at warning and
    above, and any that are not JSON, go on to this process's stderr, so a
    worker's trouble shows as it would with ``--log-level WARNING``."""

    def __init__(self, procs: Sequence[asyncio.subprocess.Process], ids: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        self.ids = list(ids)
        self._ready: list[asyncio.Future[int | None]] = [loop.create_future() for _ in procs]
        self._tasks = [
            loop.create_task(self._follow(p, i, f))
            for p, i, f in zip(procs, self.ids, self._ready, strict=True)
        ]

    async def oip_ports(self, timeout: float) -> list[int]:
        """Each worker's OIP HTTP port, once every one has logged that it is ready.
        :class:`ConfigError` when one exits first, takes over ``timeout`` seconds,
        or is ready without serving the OIP over HTTP."""
        _done, pending = await asyncio.wait(
            self._ready, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION
        )
        for f in self._ready:
            failure = f.exception() if f.done() else None
            if failure is not None:
                raise failure
        if pending:
            late = ", ".join(i for i, f in zip(self.ids, self._ready, strict=True) if not f.done())
            raise ConfigError(
                f"worker {late} did not report ready with an OIP port within {timeout:g}s"
            )
        ports = [f.result() for f in self._ready]
        deaf = [i for i, port in zip(self.ids, ports, strict=True) if port is None]
        if deaf:
            raise ConfigError(
                f"worker {', '.join(deaf)} is ready but reported no OIP port "
                "(it does not serve the Open Inference Protocol over HTTP)"
            )
        return [port for port in ports if port is not None]

    async def close(self) -> None:
        """Once the processes have ended: the readers finish at the end of their logs."""
        _done, pending = await asyncio.wait(self._tasks, timeout=5) if self._tasks else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for f in self._ready:
            if f.done() and not f.cancelled():
                f.exception()  # retrieved: nothing logged for a failure nobody waits on

    @staticmethod
    async def _follow(
        proc: asyncio.subprocess.Process, worker_id: str, ready: asyncio.Future[int | None]
    ) -> None:
        if proc.stderr is None:
            raise ConfigError(f"worker {worker_id}: its log is not piped to the demo")
        async for raw in proc.stderr:
            line = _log_line(raw)
            if line.get("event") == "worker ready" and not ready.done():
                port = line.get("oip_port")
                ready.set_result(port if isinstance(port, int) else None)
            elif str(line.get("level", "")).lower() not in _QUIET_LEVELS:
                print(raw.decode("utf-8", errors="replace"), end="", file=sys.stderr, flush=True)
        if not ready.done():
            code = await proc.wait()
            ready.set_exception(
                ConfigError(
                    f"worker {worker_id} exited with code {code} before it reported "
                    "ready with an OIP port (its log above says why)"
                )
            )


def _log_line(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _first_model(models: Path) -> str:
    return sorted(p.name for p in models.iterdir() if p.is_dir())[0]


async def wait_model_served(broker: str, name: str, timeout: float = 120.0) -> None:
    """Wait until a worker has declared the model's queues (it is then warm)."""
    from fleet.transport import connect

    async with connect(broker) as t:
        end = time.monotonic() + timeout
        while True:
            try:
                depth = await t.depth(name)
                if depth.consumers is None or depth.consumers > 0:
                    return
            except FleetError:
                pass
            if time.monotonic() > end:
                raise ConfigError(f"no worker served {name!r} within {timeout:.0f}s")
            await asyncio.sleep(0.5)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Traffic:
    """One traffic run, whichever path it takes."""

    model: str
    make_inputs: Callable[[int], Inputs]
    duration: float
    concurrency: int
    rate: float | None
    timeout: float
    on_progress: Callable[[LoadResult], None]


async def _through_broker(broker: str, t: _Traffic) -> LoadResult:
    from producer import Client
    from producer.loadgen import drive

    async with Client(broker, timeout=t.timeout) as client:
        return await drive(
            client,
            t.model,
            t.make_inputs,
            duration=t.duration,
            concurrency=t.concurrency,
            rate=t.rate,
            timeout=t.timeout,
            on_progress=t.on_progress,
        )


async def _over_http(urls: Sequence[str], t: _Traffic) -> tuple[LoadResult, OipBalancer]:
    from producer.loadgen import OipBalancer, drive_http

    async with OipBalancer(urls) as balancer:
        result = await drive_http(
            balancer,
            t.model,
            t.make_inputs,
            duration=t.duration,
            concurrency=t.concurrency,
            rate=t.rate,
            timeout=t.timeout,
            on_progress=t.on_progress,
        )
    return result, balancer


def _progress(out: IO[str]) -> Callable[[LoadResult], None]:
    """The live display: one line, rewritten in place on a terminal."""
    tty = out.isatty()

    def progress(r: LoadResult) -> None:
        line = f"[{r.seconds:5.1f}s] {r.line()}"
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)

    return progress


async def run_demo(
    *,
    broker: str,
    models: Path,
    model: str,
    workers: int,
    duration: float,
    concurrency: int,
    rate: float | None,
    timeout: float,
    http: bool = False,
) -> LoadResult:
    """Start the workers, drive the traffic (through the broker, or over OIP
    HTTP with ``http``), print the summary on stdout; the result."""
    from producer.loadgen import random_inputs
    from worker.zoo import build_all

    if http and workers < 1:
        raise ConfigError("--http sends to the workers' OIP ports: it needs --workers 1 or more")
    broker = resolve_password(broker, BROKER)  # a URL naming only the user: FLEET_BROKER_PASSWORD
    out = sys.stderr
    if not await asyncio.to_thread((models / model).exists):
        print(f"building the demo models in {models}/ ...", file=out)
        await asyncio.to_thread(build_all, models)
    width = await asyncio.to_thread(_input_width, models, model)
    path = "over OIP HTTP" if http else "through the broker"
    traffic = _Traffic(
        model=model,
        make_inputs=random_inputs(width),
        duration=duration,
        concurrency=concurrency,
        rate=rate,
        timeout=timeout,
        on_progress=_progress(out),
    )
    print(f"starting {workers} worker(s) on {redact_url(broker)} ...", file=out)
    balancer: OipBalancer | None = None
    async with _workers(broker, models, workers, http=http) as urls:
        mode = f"{rate:g} req/s offered" if rate else f"{concurrency} in flight"
        spread = f", round-robin across {len(urls)} worker(s)" if http else ""
        print(f"driving {model!r} for {duration:g}s ({mode}) {path}{spread}", file=out)
        if http:
            result, balancer = await _over_http(urls, traffic)
        else:
            result = await _through_broker(broker, traffic)
    if out.isatty():
        print(file=out)
    print(_summary(result, path, balancer))
    return result


def _summary(result: LoadResult, path: str, balancer: OipBalancer | None) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"
    batch = (
        f"{result.mean_batch:.1f}"
        if result.batch_known
        else "n/a (the protocol's responses do not report it)"
    )
    lines = [
        f"\nsummary: {result.ok} answered {path} in {result.seconds:.1f}s = {result.rps:.1f} req/s",
        f"  latency p50 {result.percentile(50) * 1e3:.2f} ms, "
        f"p99 {result.percentile(99) * 1e3:.2f} ms",
        f"  mean batch size {batch}",
    ]
    if balancer is not None:
        tries = ", ".join(f"{u.removeprefix('http://')} {balancer.sent[u]}" for u in balancer.urls)
        lines.append(f"  tries per worker: {tries}; retried on the next worker: {balancer.retried}")
    lines += [f"  errors: {errors}", f"  lost: {result.lost}"]
    return "\n".join(lines)


__all__ = ["WorkerLogs", "add_commands", "run_demo", "spawn_workers", "wait_model_served"]
