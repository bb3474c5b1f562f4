"""``fleet models``: build, and manage the models of a repository.

Each ``fleet models`` subcommand registers itself with one ``add_*(msub)``
call below; heavy libraries are imported by the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fleetctl import repository_cmd, variants_cmd
from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``models`` and its subcommands."""
    p = sub.add_parser("models", help="build and manage the models of a repository")
    msub = p.add_subparsers(dest="models_command", required=True)
    _add_build(msub)
    _add_push(msub)
    repository_cmd.add_commands(msub)
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


def _add_push(msub: Subparsers[argparse.ArgumentParser]) -> None:
    p = msub.add_parser(
        "push",
        help="upload a model repository to S3, where workers load it from",
        description="Upload <model>/<version>/{model.onnx,config.toml,metadata.json} to "
        "s3://BUCKET/PREFIX, the layout a worker started with --models s3://BUCKET/PREFIX "
        "reads. On AWS the fleet's repository is `terraform output -raw models_uri`. "
        "The repository is checked first; files already there (same SHA-256) are skipped. "
        "Credentials, region and endpoint come from the AWS environment (needs the aws extra).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--repository", type=Path, default=DEFAULT_MODELS, help="local model repository")
    p.add_argument("--to", required=True, metavar="S3_URI", help="s3://bucket/prefix")
    p.add_argument(
        "--delete",
        action="store_true",
        help="also delete model files under the prefix that the repository does not have",
    )
    p.set_defaults(handler=push_models)


def push_models(args: argparse.Namespace) -> int:
    from worker.repository import push_s3

    if not args.to.startswith("s3://"):
        print(
            f"fleet models push: --to must be s3://bucket/prefix, got {args.to!r}", file=sys.stderr
        )
        return 2
    done = push_s3(args.repository, args.to, delete=args.delete)
    bucket = args.to.removeprefix("s3://").partition("/")[0]
    for what, keys in (("uploaded", done.uploaded), ("deleted", done.deleted)):
        for key in keys:
            print(f"{what} s3://{bucket}/{key}")
    print(
        f"{len(done.uploaded)} uploaded, {len(done.unchanged)} unchanged, "
        f"{len(done.deleted)} deleted: {args.to}"
    )
    return 0


__all__ = ["add_commands", "build_models", "push_models"]
