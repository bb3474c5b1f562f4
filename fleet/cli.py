"""The ``fleet`` command line. Subcommands import what they need lazily."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.errors import FleetError

DEFAULT_MODELS = Path("models")


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless its help already says it, or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="serve models from a repository, consuming requests from a broker",
        description="Consume inference requests in batches, run ONNX Runtime, publish replies. "
        "Every flag may also be set as FLEET_<NAME> in the environment. "
        "SIGTERM drains: stop consuming, finish and answer in-flight work, exit 0.",
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
    p.add_argument(
        "--heartbeat-interval", type=float, help="seconds between heartbeats (default 5)"
    )
    p.add_argument(
        "--drain-timeout", type=float, help="seconds SIGTERM waits for in-flight work (default 30)"
    )
    p.add_argument("--prefetch", type=int, help="unacked messages per queue (default 2x max batch)")
    p.set_defaults(handler=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    from worker.service import Worker
    from worker.settings import WorkerSettings

    fields = (
        "broker",
        "models",
        "worker_id",
        "http_host",
        "http_port",
        "heartbeat_interval",
        "drain_timeout",
        "prefetch",
    )
    given = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    try:
        settings = WorkerSettings(**given)
    except Exception as exc:  # pydantic's ValidationError, with every bad field
        print(f"fleet worker: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(Worker(settings)))


async def _serve(worker: object) -> int:
    from worker.service import Worker

    assert isinstance(worker, Worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    watcher_task = None
    try:
        lifecycle = importlib.import_module("worker.lifecycle")
        watcher = lifecycle.LifecycleWatcher.from_env()
    except (ImportError, AttributeError):
        watcher = None
    if watcher is not None:

        async def _leaving() -> None:
            await watcher.wait_for_termination()
            stop.set()

        watcher_task = loop.create_task(_leaving())
    await stop.wait()
    await worker.stop()
    if watcher is not None and watcher_task is not None:
        leaving = watcher_task.done() and not watcher_task.cancelled()
        watcher_task.cancel()
        # SIGTERM without a scale-in (docker stop, reboot) has no lifecycle action to complete
        if leaving or await watcher.is_terminating():
            try:
                await watcher.complete()
            except FleetError as exc:
                print(f"fleet worker: lifecycle hook not completed: {exc.message}", file=sys.stderr)
    return 0


def _add_models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="build the demo models")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser(
        "build",
        help="build the 'digits' and 'mlp' models deterministically",
        formatter_class=HelpFormatter,
    )
    b.add_argument("dir", nargs="?", type=Path, default=DEFAULT_MODELS, help="model repository")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    b.set_defaults(handler=_build_models)


def _build_models(args: argparse.Namespace) -> int:
    from worker.zoo import build_all

    for path in build_all(args.dir, force=args.force):
        print(path)
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run workers and drive traffic through them, with live progress",
        description="One command, no services needed: an embedded broker, the demo models "
        "(built if missing), workers, and a traffic run with a live display and a summary.",
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
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from fleet.demo import run_demo

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
        )
    )
    return 0 if summary.lost == 0 else 1


def _add_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser], module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    mod.add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    from fleet import __version__

    parser = argparse.ArgumentParser(
        prog="fleet",
        description="An asynchronous, queue-driven inference fleet: clients publish requests to "
        "RabbitMQ or Kafka, batching ONNX Runtime workers answer, an autoscaler follows traffic.",
    )
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", choices=("json", "console"), default="json", help="log line format"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_worker(sub)
    _add_models(sub)
    _add_optional(sub, "autoscaler.cli")
    _add_optional(sub, "autoscaler.simcli")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fleet.logging import configure

    args = build_parser().parse_args(argv)
    configure(level=args.log_level, json=args.log_format == "json")
    try:
        return int(args.handler(args))
    except FleetError as exc:
        print(f"fleet {args.command}: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
