"""``fleet models list|label|load|unload``: what a repository and a worker serve.

``list`` shows each model's versions (which ones its policy serves), labels,
default and the versions that cannot be read; with ``--worker`` what one
worker serves. ``label`` points a label at a version or splits it between
versions, which is how a fleet promotes a version and rolls it back: each is
one command, and every worker follows within one look at the repository.
``load`` and ``unload`` act on one worker through its Open Inference Protocol
port (the repository extension), for workers run without watching
(``--watch-interval 0``) or to take a model off one worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers


def add_commands(msub: Subparsers[argparse.ArgumentParser]) -> None:
    _add_list(msub)
    _add_label(msub)
    for action in ("load", "unload"):
        _add_control(msub, action)


def _worker_arg(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--worker",
        required=required,
        metavar="URL",
        help="a worker's Open Inference Protocol address, e.g. http://127.0.0.1:8000",
    )


def _add_control(msub: Subparsers[argparse.ArgumentParser], action: str) -> None:
    what = {
        "load": "serve a model from the repository now, on one worker",
        "unload": "stop serving a model on one worker until it is loaded again",
    }[action]
    p = msub.add_parser(
        action,
        help=what,
        description=f"{what[0].upper()}{what[1:]}, through the worker's Open Inference "
        f"Protocol repository extension (POST /v2/repository/models/MODEL/{action}). A fleet "
        "that watches its repository follows the repository instead: write or remove a "
        "version, or change model.toml (fleet models label).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL")
    _worker_arg(p, required=True)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker")
    p.set_defaults(handler=control_model, action=action)


def control_model(args: argparse.Namespace) -> int:
    url = f"{args.worker.rstrip('/')}/v2/repository/models/{args.model}/{args.action}"
    try:
        _post(url, {}, args.timeout)
    except RuntimeError as exc:
        print(f"fleet models {args.action}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model}: {args.action}ed on {args.worker}")
    return 0


def _post(url: str, body: dict[str, Any], timeout: float) -> Any:
    """POST ``body`` as JSON; the answer's JSON, or :class:`RuntimeError` with
    the worker's error."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            why = exc.reason
        raise RuntimeError(f"{exc.code}: {why}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _repository_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repository",
        default=str(DEFAULT_MODELS),
        help="model repository: a directory or s3://bucket/prefix",
    )


def _add_list(msub: Subparsers[argparse.ArgumentParser]) -> None:
    p = msub.add_parser(
        "list",
        help="list a repository's models, versions, labels and problems",
        description="Each model of the repository with its versions (* marks those its "
        "model.toml serves), its labels (a split with its weights), the version a request "
        "without one gets, and every version directory that cannot be read, with why.",
        formatter_class=HelpFormatter,
    )
    _repository_arg(p)
    _worker_arg(p, required=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=list_models)


def _add_label(msub: Subparsers[argparse.ArgumentParser]) -> None:
    p = msub.add_parser(
        "label",
        help="point a label at a version, or split it between versions",
        description="Set LABEL of MODEL in the model's model.toml: one VERSION, or a split "
        "VERSION=WEIGHT ... (e.g. 3=90 4=10: 90 in 100 of the label's requests get version 3). "
        "Requests name a label where they name a version. Promote: "
        "`fleet models label digits stable 4`; roll back: `fleet models label digits stable 3`. "
        "The file is checked against the repository's versions first and written whole; on "
        "s3:// it is uploaded. Workers follow on their next look (--watch-interval).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("versions", nargs="*", metavar="VERSION[=WEIGHT]")
    _repository_arg(p)
    p.add_argument("--remove", action="store_true", help="remove the label")
    p.add_argument(
        "--default",
        action="store_true",
        help="also make the label what a request without a version gets",
    )
    p.set_defaults(handler=label_model)


def label_model(args: argparse.Namespace) -> int:
    from worker.repository import update_policy
    from worker.serving_policy import ModelPolicy, parse_split

    if args.remove == bool(args.versions):
        print("fleet models label: give VERSION[=WEIGHT] ... or --remove", file=sys.stderr)
        return 2
    try:
        split = None if args.remove else parse_split(args.versions)
    except ValueError as exc:
        print(f"fleet models label: {exc}", file=sys.stderr)
        return 2

    def change(policy: ModelPolicy) -> ModelPolicy:
        policy = policy.with_label(args.label, split)
        return policy.with_default(args.label) if args.default else policy

    try:
        policy, where = update_policy(args.repository, args.model, change)
    except (FleetError, ValueError) as exc:
        message = exc.message if isinstance(exc, FleetError) else str(exc)
        print(f"fleet models label: {message}", file=sys.stderr)
        return 1
    target = policy.labels.get(args.label)
    said = "removed" if target is None else _split(target)
    default = policy.default or "the newest version"
    print(f"{args.model}: {args.label} -> {said} (default: {default}) in {where}")
    return 0


def _split(split: dict[str, float]) -> str:
    if len(split) == 1:
        return next(iter(split))
    return " ".join(f"{v}={w:g}" for v, w in split.items())


def list_models(args: argparse.Namespace) -> int:
    if args.worker is not None:
        return _list_worker(args)
    try:
        models = describe(args.repository)
    except FleetError as exc:
        print(f"fleet models list: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for name, m in models.items():
        versions = " ".join(v + ("*" if v in m["served"] else "") for v in m["versions"])
        print(f"{name}: versions {versions or '-'}; default {m['default']}")
        for label, split in m["labels"].items():
            print(f"  label {label}: {_split(split)}")
        if m["policy_error"]:
            print(f"  model.toml refused: {m['policy_error']}")
        for version, why in m["problems"].items():
            print(f"  version {version} unreadable: {why}")
    return 0


def _list_worker(args: argparse.Namespace) -> int:
    """One worker's repository index: each version and its state."""
    try:
        entries = _post(f"{args.worker.rstrip('/')}/v2/repository/index", {}, 30.0)
    except RuntimeError as exc:
        print(f"fleet models list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        reason = f" ({e['reason']})" if e.get("reason") else ""
        print(f"{e['name']} {e['version']}: {e['state']}{reason}")
    return 0


def describe(root: str | Path) -> dict[str, dict[str, Any]]:
    """Every model of the repository at ``root``, as ``fleet models list`` shows it."""
    from worker.repository import ModelRepository, version_key
    from worker.serving_policy import ModelPolicy

    repo = ModelRepository(root)
    scan = repo.scan()
    out: dict[str, dict[str, Any]] = {}
    for model in sorted({m for m, _ in scan.signatures}):
        versions = sorted((s.version for s in scan.specs if s.name == model), key=version_key)
        entry: dict[str, Any] = {"versions": versions, "policy_error": None}
        try:
            policy = ModelPolicy.read(repo.root / model, versions) or ModelPolicy()
        except FleetError as exc:
            entry["policy_error"] = exc.message
            policy = ModelPolicy()
        entry["served"] = policy.served(versions)
        entry["labels"] = policy.labels
        entry["default"] = policy.default or (versions[-1] if versions else None)
        entry["problems"] = {
            where.name: why for where, why in scan.problems if where.parent.name == model
        }
        out[model] = entry
    return out


__all__ = ["add_commands", "control_model", "describe", "label_model", "list_models"]
