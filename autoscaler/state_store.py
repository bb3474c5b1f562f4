"""The policy's state, kept across restarts of the autoscaler.

A policy's state holds its cooldowns, its scale-in stabilization window and
what it learned about recurring surges; without it, a restarted autoscaler
scales in at once after a scale-out, or forgets a surge it was about to
pre-warm for. :class:`StateStore` writes the state to a local JSON file
after every poll (atomically: a temporary file renamed over the old one) and
reads it back at start.

The file (version 1)::

    {"version": 1, "policy": "default", "state_type": "PolicyState",
     "saved_at": 1767225600.0, "state": {"last_out_at": 1767225590.0, ...}}

Times in a state are the snapshots' ``now``: the live signals read it from
the wall clock, so a state stays meaningful on another host or after a
reboot. A file written for another policy, or one that cannot be read or
validated, is reported and ignored: the policy starts from its initial state.

Where the state lives (``state_file`` in the configuration):

- a local path: the file, replaced atomically;
- ``s3://BUCKET/KEY``: an S3 object, for an autoscaler whose host is replaced
  (the Terraform deployment keeps it in the models bucket);
- ``ssm:/NAME``: an SSM parameter (``String``, intelligent tiering, so a state
  over 4 KB is kept too). The Terraform deployment creates it holding ``{}``,
  which reads as no state saved yet, so that ``terraform destroy`` removes it.

On AWS the state is written only when it changed (the document apart from its
``saved_at``) or when its last write is ``REFRESH_S`` old, so a quiet fleet
costs one request in five minutes. A store that cannot be read or written is
logged, never fatal: the loop goes on without persistence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from autoscaler.types import Policy
from fleet.aws import error_code
from fleet.logging import get_logger

log = get_logger("autoscaler.state_store")

STATE_VERSION = 1
S = TypeVar("S")


class LocalFile:
    """A local JSON file, replaced atomically."""

    always_write = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


class S3Object:
    """An S3 object, through the fleet's S3 client (retries, endpoint and
    credentials from the environment)."""

    always_write = False

    def __init__(self, bucket: str, key: str, client: Any = None) -> None:
        self.bucket, self.key = bucket, key
        self._client = client

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def client(self) -> Any:
        if self._client is None:
            from fleet.aws import s3_client

            self._client = s3_client()
        return self._client

    def read(self) -> str | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"]
        except Exception as exc:
            if error_code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise
        return bytes(body.read()).decode("utf-8")

    def write(self, text: str) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=text.encode("utf-8"),
            ContentType="application/json",
        )


class SsmParameter:
    """An SSM parameter (``String``; intelligent tiering takes a state past 4 KB)."""

    always_write = False

    def __init__(self, name: str, client: Any = None) -> None:
        self.name = name
        self._client = client

    def __str__(self) -> str:
        return f"ssm:{self.name}"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            from fleet.aws import client_config

            self._client = boto3.client("ssm", config=client_config())
        return self._client

    def read(self) -> str | None:
        try:
            return str(self.client.get_parameter(Name=self.name)["Parameter"]["Value"])
        except Exception as exc:
            if error_code(exc)[0] == "ParameterNotFound":
                return None
            raise

    def write(self, text: str) -> None:
        self.client.put_parameter(
            Name=self.name, Value=text, Type="String", Overwrite=True, Tier="Intelligent-Tiering"
        )


Backend = LocalFile | S3Object | SsmParameter


def backend_for(location: str | Path) -> Backend:
    """The store a ``state_file`` setting names: ``s3://BUCKET/KEY``,
    ``ssm:/NAME`` or a local path. A malformed AWS location is a ``ValueError``."""
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key or key.endswith("/"):
            raise ValueError(f"{text!r}: an S3 state location is s3://BUCKET/KEY")
        return S3Object(bucket, key)
    if text.startswith("ssm:"):
        name = text.removeprefix("ssm:")
        if not name.startswith("/") or len(name) < 2 or name.endswith("/"):
            raise ValueError(f"{text!r}: an SSM state location is ssm:/NAME (a path)")
        return SsmParameter(name)
    return LocalFile(Path(location))


class StateStore:
    """A policy's state in a local file, an S3 object or an SSM parameter."""

    REFRESH_S = 300.0

    def __init__(
        self, location: str | Path | Backend, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = (
            location
            if isinstance(location, LocalFile | S3Object | SsmParameter)
            else backend_for(location)
        )
        self.clock = clock
        self._written: tuple[str, float] | None = None  # (state document, when)

    @property
    def where(self) -> str:
        return str(self.backend)

    def save(self, policy: Policy[S], state: S) -> None:
        """Write ``state`` (a dataclass, or ``None``); never raises for I/O,
        it logs (the loop goes on without persistence)."""
        if state is not None and not dataclasses.is_dataclass(state):
            return
        now = self.clock()
        body = {
            "version": STATE_VERSION,
            "policy": policy.name,
            "state_type": type(state).__name__,
            "state": None if state is None else _plain(dataclasses.asdict(state)),  # type: ignore[arg-type]
        }
        key = json.dumps(body, separators=(",", ":"), sort_keys=True)
        if not self.backend.always_write and self._written is not None:
            same, at = self._written
            if same == key and now - at < self.REFRESH_S:
                return
        doc = {**body, "saved_at": now}
        try:
            self.backend.write(json.dumps(doc, separators=(",", ":")))
        except Exception as exc:  # OSError, or any AWS error: never fatal
            log.warning("policy state not saved", path=self.where, error=repr(exc))
            return
        self._written = (key, now)

    def load(self, policy: Policy[S]) -> S | None:
        """The state saved for ``policy``, or ``None`` when there is none it
        can use (none saved, another policy, unreadable or invalid: logged)."""
        initial = policy.initial_state()
        try:
            text = self.backend.read()
            if text is None:
                return None
            doc = json.loads(text)
            if doc == {}:  # made empty for the autoscaler to fill (by Terraform)
                return None
        except Exception as exc:  # OSError, ValueError, or any AWS error
            log.warning(
                "policy state unreadable: starting afresh", path=self.where, error=repr(exc)
            )
            return None
        why = _mismatch(doc, policy.name, type(initial).__name__)
        if why:
            log.warning("policy state not used: starting afresh", path=self.where, reason=why)
            return None
        if initial is None or not dataclasses.is_dataclass(initial):
            return initial
        try:
            state: S = TypeAdapter(type(initial)).validate_python(doc["state"])
        except ValidationError as exc:
            log.warning("policy state invalid: starting afresh", path=self.where, error=str(exc))
            return None
        log.info("policy state restored", path=self.where, saved_at=doc.get("saved_at"))
        return state


def _mismatch(doc: Any, policy: str, state_type: str) -> str | None:
    """Why a document is not a state for this policy, or ``None``."""
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return f"not a version {STATE_VERSION} state file"
    if doc.get("policy") != policy or doc.get("state_type") != state_type:
        return f"saved for policy {doc.get('policy')!r} ({doc.get('state_type')}), not {policy!r}"
    return None


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON holds)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "STATE_VERSION",
    "Backend",
    "LocalFile",
    "S3Object",
    "SsmParameter",
    "StateStore",
    "backend_for",
]
