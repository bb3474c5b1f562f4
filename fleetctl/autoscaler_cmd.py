"""``fleet autoscaler --config FILE``: keep capacity matched to traffic.

``--once`` reads the signals, makes one decision (applying it, as a poll
would), prints it as JSON and exits; it suits the ``ec2`` and ``dry-run``
actuators (a ``local`` actuator's workers stop when the command exits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from fleet.errors import ConfigError, FleetError
from fleet.logging import configure
from fleetctl.formatting import Subparsers

if TYPE_CHECKING:
    from autoscaler.config import AutoscalerConfig
    from autoscaler.loop import Autoscaler
    from autoscaler.types import Decision


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``autoscaler`` on the ``fleet`` command's subparsers. The
    handler is ``args.handler(args) -> int``."""
    p = sub.add_parser(
        "autoscaler",
        help="set the fleet's capacity from queue depth, arrival rate and heartbeats",
        description="Keep capacity matched to traffic: signals -> policy -> actuator.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--once", action="store_true", help="make one decision, print it as JSON, and exit"
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from autoscaler.config import load_config

    configure(level=args.log_level, json=getattr(args, "log_format", "json") == "json")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"fleet autoscaler: {exc.message}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(cfg, once=args.once))
    except ConfigError as exc:
        print(f"fleet autoscaler: {exc.message}", file=sys.stderr)
        return 2
    except FleetError as exc:
        print(f"fleet autoscaler: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _main(cfg: AutoscalerConfig, *, once: bool) -> int:
    from autoscaler.loop import from_config

    scaler = await from_config(cfg)
    try:
        await scaler.start()
        if once:
            print(json.dumps(_decision_json(scaler, await scaler.run_once())))
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await scaler.run(stop)
        return 0
    finally:
        await scaler.close()


def _decision_json(scaler: Autoscaler, decision: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {
        "desired": decision.desired,
        "direction": decision.direction,
        "reasons": list(decision.reasons),
    }
    snap = scaler.last_snapshot
    if snap is not None:
        out["snapshot"] = {
            "backlog": snap.backlog,
            "arrival_rate": snap.arrival_rate,
            "per_instance_rps": snap.per_instance_rps,
            "busy_fraction": snap.busy_fraction,
            "gpu_utilization": snap.gpu_utilization,
            "saturation": snap.saturation,
            "in_service": snap.in_service,
            "pending": snap.pending,
            "desired": snap.desired,
        }
    return out


__all__ = ["add_commands", "run_command"]
