"""``fleet worker``: serve models from a broker."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from fleet import eventloop
from fleet.errors import FleetError
from fleet.eventloop import EVENT_LOOPS
from fleet.heap import freeze_heap
from fleetctl.formatting import HelpFormatter, Subparsers

if TYPE_CHECKING:
    from worker.lifecycle import LifecycleWatcher
    from worker.service import Worker


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``worker``."""
    _add_worker(sub)


def _add_worker(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="serve models from a repository, consuming requests from a broker",
        description="Consume inference requests in batches, run ONNX Runtime, publish replies. "
        "Every flag may also be set as FLEET_<NAME> in the environment. "
        "SIGTERM drains: stop consuming, finish and answer in-flight work, exit 0. "
        "A worker whose broker does not answer yet retries with capped exponential backoff "
        "(alive on /healthz, not ready on /readyz meanwhile; SIGTERM exits 0); refused "
        "credentials or a bad URL end it at once with a non-zero status.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--broker", help="broker URL: memory://NAME, amqp://..., kafka://host:port")
    p.add_argument("--models", help="model repository: a directory or s3://bucket/prefix")
    p.add_argument("--worker-id", help="name in heartbeats and replies (default: host-pid)")
    p.add_argument(
        "--http-host", help="address of /healthz, /readyz and /metrics (default 127.0.0.1)"
    )
    p.add_argument(
        "--http-port", type=int, help="port of the HTTP endpoints; 0 picks one (default 8080)"
    )
    _add_oip(p)
    p.add_argument(
        "--heartbeat-interval", type=float, help="seconds between heartbeats (default 5)"
    )
    p.add_argument(
        "--watch-interval",
        type=float,
        help="seconds between looks at the model repository for versions added (loaded, "
        "warmed up, served) and removed (drained, unloaded); 0 reads it once (default 5)",
    )
    p.add_argument(
        "--drain-timeout", type=float, help="seconds SIGTERM waits for in-flight work (default 30)"
    )
    p.add_argument("--prefetch", type=int, help="unacked messages per queue (default 2x max batch)")
    p.add_argument(
        "--max-held-requests",
        type=int,
        help="requests held at once before the worker stops taking messages (default 4x max batch)",
    )
    p.add_argument(
        "--max-held-bytes",
        type=int,
        help="message bytes held at once before the worker stops taking messages (default 256 MiB)",
    )
    _add_services(p)
    p.set_defaults(handler=run_worker)


def _add_oip(p: argparse.ArgumentParser) -> None:
    """The flags of the Open Inference Protocol over HTTP."""
    p.add_argument(
        "--oip-host",
        help="address of the Open Inference Protocol over HTTP, /v2/... (default 127.0.0.1)",
    )
    p.add_argument(
        "--oip-port",
        type=int,
        help="port of the Open Inference Protocol over HTTP, apart from /metrics; "
        "0 picks one (default: not served)",
    )
    p.add_argument(
        "--oip-grpc-port",
        type=int,
        help="port of the Open Inference Protocol over gRPC on --oip-host; "
        "0 picks one (default: not served)",
    )
    p.add_argument(
        "--max-sync-requests",
        type=int,
        help="OIP requests (HTTP and gRPC) waiting or running at once before more are "
        "refused: 503 / RESOURCE_EXHAUSTED (default 4x max batch)",
    )
    p.add_argument(
        "--sync-timeout",
        type=float,
        help="seconds an OIP request without a timeout parameter may wait (default 60)",
    )


def _add_services(p: argparse.ArgumentParser) -> None:
    """The flags of the wait for the broker, and of the result store."""
    _add_broker_wait(p)
    p.add_argument(
        "--results",
        help="result store for jobs: memory://NAME, redis://host:port/db, s3://bucket/prefix "
        "(env FLEET_RESULTS; "
        "its password from FLEET_RESULTS_PASSWORD[_FILE]); default: none, jobs are refused",
    )
    p.add_argument(
        "--notify",
        metavar="DESTINATION",
        help="topic exchange (RabbitMQ) or topic (Kafka) that gets a JSON message per finished "
        "job, keyed MODEL.done or MODEL.failed; created if missing (default: none)",
    )
    p.add_argument(
        "--payloads",
        help="payload store of the claim check (large requests and replies): file:///dir or "
        "s3://bucket/prefix; default: none, claimed requests are refused",
    )
    p.add_argument(
        "--cache",
        help="result cache shared with clients: memory://NAME, redis://host:port/db "
        "(default: none)",
    )
    p.add_argument("--cache-ttl", type=float, help="seconds a cached answer is kept (default 3600)")
    p.add_argument(
        "--claim-threshold",
        type=int,
        help="replies over this many bytes go through the payload store (default 1 MiB)",
    )


def _add_broker_wait(p: argparse.ArgumentParser) -> None:
    """The flags of the wait for the broker at start."""
    p.add_argument(
        "--broker-wait-timeout",
        type=float,
        help="seconds to wait for the broker at start before exiting 1 (default: no limit)",
    )
    p.add_argument(
        "--broker-retry-initial",
        type=float,
        help="seconds before the second attempt to reach the broker (default 0.5)",
    )
    p.add_argument(
        "--broker-retry-max",
        type=float,
        help="most seconds between attempts to reach the broker (default 30)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        help="the event loop (default asyncio); uvloop needs pip install 'inference-fleet[uvloop]'",
    )


def run_worker(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from worker.service import Worker
    from worker.settings import WorkerSettings
    from worker.tuning import tune_process_for_serving

    given = {
        name: value
        for name, value in vars(args).items()
        if name in WorkerSettings.model_fields and value is not None
    }
    try:
        settings = WorkerSettings(**given)
    except ValidationError as exc:  # every bad field at once
        print(f"fleet worker: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    tune_process_for_serving()
    return eventloop.run(serve(Worker(settings), freeze=True), settings.event_loop)


async def serve(worker: Worker, stop: asyncio.Event | None = None, *, freeze: bool = False) -> int:
    """Run ``worker`` until SIGTERM/SIGINT (or ``stop`` is set) or an Auto
    Scaling termination, then drain it and, when the instance is leaving,
    complete the lifecycle action. A stop while the worker starts (loading its
    models, waiting for its broker) ends it at once with 0: it holds no work.
    With ``freeze`` (a process that is this worker), what exists once it has
    started is exempted from the garbage collector's walks
    (:func:`fleet.heap.freeze_heap`)."""
    from worker.lifecycle import LifecycleWatcher

    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not await _start_unless_stopped(worker, stop):
        return 0
    if freeze:
        freeze_heap()
    watcher = LifecycleWatcher.from_env()
    watching = loop.create_task(_watch(watcher, stop)) if watcher is not None else None
    await stop.wait()
    await worker.stop()
    if watcher is not None and watching is not None:
        leaving = watching.done() and not watching.cancelled()
        watching.cancel()
        await _complete_if_leaving(watcher, leaving=leaving)
    return 0


async def _start_unless_stopped(worker: Worker, stop: asyncio.Event) -> bool:
    """Start ``worker``; ``False`` when ``stop`` came first (the start is then
    cancelled and the worker shut down). A start that fails shuts it down too."""
    starting = asyncio.ensure_future(worker.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await worker.abort()
        return False
    if starting.exception() is not None:
        await worker.abort()
        starting.result()  # raises what the start raised
    return True


async def _watch(watcher: LifecycleWatcher, stop: asyncio.Event) -> None:
    await watcher.wait_for_termination()
    stop.set()


async def _complete_if_leaving(watcher: LifecycleWatcher, *, leaving: bool) -> None:
    # SIGTERM without a scale-in (docker stop, reboot) has no lifecycle action to complete
    if leaving or await watcher.is_terminating():
        try:
            await watcher.complete()
        except FleetError as exc:
            print(f"fleet worker: lifecycle hook not completed: {exc.message}", file=sys.stderr)


__all__ = ["add_commands", "run_worker", "serve"]
