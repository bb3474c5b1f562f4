"""``fleet topology``: what the fleet creates on its broker, and how.

Connects to the broker (read-only: it creates nothing) and prints every topic,
queue and exchange the fleet would create for the named models, with the
settings it would create them with: replication, partitions, queue types and
limits, which follow the URL's transport options and the cluster's size. With
``--format commands`` each comes as a command of the broker's own tools, so
an operator can create everything beforehand and run the fleet with a user
that may not create anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from fleet.errors import ConfigError
from fleet.settings import BROKER, resolve_password
from fleetctl.formatting import HelpFormatter, Subparsers


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "topology",
        help="print the topics, queues and exchanges the fleet creates, with their settings",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--broker",
        default=os.environ.get(BROKER),
        help="broker URL, with transport options in its query (default: $FLEET_BROKER);"
        " a password comes from FLEET_BROKER_PASSWORD[_FILE]",
    )
    p.add_argument(
        "--model", action="append", default=[], help="a model to serve (repeat for several)"
    )
    p.add_argument(
        "--models", type=Path, help="a model repository: every model in it (each directory)"
    )
    p.add_argument(
        "--format",
        choices=("table", "json", "commands"),
        default="table",
        help="table: for reading; json: for tools; commands: to create it all beforehand",
    )
    p.set_defaults(handler=run)


def _models(args: argparse.Namespace) -> list[str]:
    names = list(args.model)
    if args.models is not None:
        if not args.models.is_dir():
            raise ConfigError(f"--models {args.models}: no such directory")
        names += sorted(d.name for d in args.models.iterdir() if d.is_dir())
    if not names:
        raise ConfigError("name the models: --model NAME (repeatable) or --models DIR")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    if not args.broker:
        raise ConfigError("name the broker: --broker URL or $FLEET_BROKER")
    print(asyncio.run(_render(resolve_password(args.broker, BROKER), _models(args), args.format)))
    return 0


async def _render(url: str, models: list[str], fmt: str) -> str:
    from fleet.transport import connect

    async with connect(url) as transport:
        resources = await transport.topology(models)
    if fmt == "json":
        return json.dumps(
            [
                {"kind": r.kind, "name": r.name, "settings": r.settings, "note": r.note}
                for r in resources
            ],
            indent=2,
        )
    if fmt == "commands":
        return "\n".join(
            f"# {r.note or r.name}\n{r.command}" if r.command else f"# {r.name}: {r.note}"
            for r in resources
        )
    rows = [
        (r.kind, r.name, " ".join(f"{k}={v}" for k, v in r.settings.items())) for r in resources
    ]
    widths = [max(len(row[i]) for row in [("KIND", "NAME", ""), *rows]) for i in range(2)]
    lines = [f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  SETTINGS"]
    lines += [f"{k:<{widths[0]}}  {n:<{widths[1]}}  {s}" for k, n, s in rows]
    return "\n".join(lines)


__all__ = ["add_commands", "run"]
