"""``fleet models``: build, and manage the models of a repository.

Each ``fleet models`` subcommand registers itself with one ``add_*(msub)``
call below; heavy libraries are imported by the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleetctl import variants_cmd
from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``models`` and its subcommands."""
    p = sub.add_parser("models", help="build and manage the models of a repository")
    msub = p.add_subparsers(dest="models_command", required=True)
    _add_build(msub)
    variants_cmd.add_commands(msub)


def _add_build(msub: Subparsers[argparse.ArgumentParser]) -> None:
    b = msub.add_parser(
        "build",
        help="build the 'digits' and 'mlp' models deterministically",
        formatter_class=HelpFormatter,
    )
    b.add_argument("dir", nargs="?", type=Path, default=DEFAULT_MODELS, help="model repository")
    b.add_argument("--force", action="store_true", help="rebuild even when present")
    b.set_defaults(handler=build_models)


def build_models(args: argparse.Namespace) -> int:
    from worker.zoo import ToolsMissing, build_all

    try:
        paths = build_all(args.dir, force=args.force)
    except ToolsMissing as exc:
        print(f"fleet models build: {exc.message}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


__all__ = ["add_commands", "build_models"]
