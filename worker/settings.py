"""Worker settings: command-line flags, else ``FLEET_*`` environment variables.

The broker's password belongs in the environment, not on the command line:
``FLEET_BROKER`` holds the whole URL, or ``--broker`` names the user only
(``amqp://fleet@mq/``) and ``FLEET_BROKER_PASSWORD`` or
``FLEET_BROKER_PASSWORD_FILE`` (a file holding it) supplies the password.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.errors import ConfigError, InvalidArgument
from fleet.eventloop import EventLoop
from fleet.eventloop import check as check_event_loop
from fleet.settings import BROKER, RedactedRepr, resolve_password
from fleet.transport import TRANSPORTS, check_destination


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(RedactedRepr, BaseSettings):
    """Its ``repr`` and its validation errors never show the broker's password."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_", extra="forbid", frozen=True, populate_by_name=True
    )

    broker: str = Field(
        "memory://default",
        description="broker URL; env FLEET_BROKER or FLEET_BROKER_URL; a URL naming a user "
        "without a password takes FLEET_BROKER_PASSWORD or FLEET_BROKER_PASSWORD_FILE",
        validation_alias=AliasChoices("broker", "FLEET_BROKER", "FLEET_BROKER_URL"),
    )
    models: Path | str = Field(
        ..., description="model repository: a directory or s3://bucket/prefix"
    )
    results: str | None = Field(
        None,
        description="result store URL for jobs (memory://NAME, redis://host:port/db, "
        "s3://bucket/prefix); env "
        "FLEET_RESULTS; its password may come from FLEET_RESULTS_PASSWORD[_FILE]. Without "
        "one, a job's request is dead-lettered",
    )
    notify: str | None = Field(
        None,
        description="a topic exchange (RabbitMQ) or topic (Kafka) that gets a JSON message "
        "per finished job, keyed <model>.<done|failed>; created if missing. Default: none",
    )
    payloads: str | None = Field(
        None,
        description="payload store of the claim check: file:///dir or s3://bucket/prefix; "
        "requests whose inputs are elsewhere are refused. Without one, claimed requests are "
        "refused and replies are never claimed",
    )
    claim_threshold: int = Field(
        1 << 20, ge=1024, description="replies over this many bytes go to the payload store"
    )
    cache: str | None = Field(
        None,
        description="result cache (memory://NAME, redis://host:port/db): answers to clients "
        "that use the same cache are stored by model, version and inputs' hash",
    )
    cache_ttl: float = Field(3600.0, gt=0, description="seconds a cached answer is kept")
    worker_id: str = Field(default_factory=_default_worker_id)
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(8080, description="0 picks a free port; None serves no HTTP")
    oip_host: str = Field("127.0.0.1", description="address of the Open Inference Protocol")
    oip_port: int | None = Field(
        None,
        description="port of the Open Inference Protocol over HTTP (/v2/...), apart from "
        "/metrics; 0 picks a free port; None serves none",
    )
    oip_grpc_port: int | None = Field(
        None,
        description="port of the Open Inference Protocol over gRPC "
        "(inference.GRPCInferenceService) on oip_host; 0 picks a free port; None serves none",
    )
    max_sync_requests: int | None = Field(
        None,
        ge=1,
        description="synchronous (OIP over HTTP and gRPC) requests waiting or running at once "
        "before more are refused (HTTP 503, gRPC RESOURCE_EXHAUSTED); default 4x the "
        "largest max batch",
    )
    sync_timeout: float = Field(
        60.0, gt=0, description="seconds an OIP request without a timeout parameter may wait"
    )
    heartbeat_interval: float = Field(5.0, gt=0)
    watch_interval: float = Field(
        5.0,
        ge=0,
        description="seconds between looks at the model repository: versions added are "
        "loaded, warmed up and served, versions removed drained and unloaded; 0 reads it "
        "once, at start",
    )
    drain_timeout: float = Field(30.0, gt=0, description="seconds SIGTERM waits for in-flight work")
    prefetch: int | None = Field(
        None, ge=1, description="unacked messages per queue; default 2x batch"
    )
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_held_requests: int | None = Field(
        None,
        ge=1,
        description="requests held (received, not yet answered) before the worker stops "
        "consuming; default 4x the largest max batch",
    )
    max_held_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="bytes of messages held before the worker stops consuming",
    )
    max_model_threads: int = Field(1, ge=1, description="concurrent batches per model version")
    broker_wait_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds a starting worker waits for its broker before it exits non-zero; "
        "default None: no limit (alive on /healthz, not ready on /readyz, while it waits)",
    )
    broker_retry_initial: float = Field(
        0.5, gt=0, description="seconds before the second attempt to reach the broker at start"
    )
    broker_retry_max: float = Field(
        30.0, gt=0, description="most seconds between attempts to reach the broker at start"
    )
    event_loop: EventLoop = Field(
        "asyncio",
        description="the event loop: asyncio, or uvloop (pip install 'inference-fleet[uvloop]')",
    )

    @field_validator("broker")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0]
        if "://" not in v or scheme not in TRANSPORTS:
            known = TRANSPORTS.names()
            raise ValueError(f"must start with one of {', '.join(s + '://' for s in known)}")
        try:
            return resolve_password(v, BROKER)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("event_loop")
    @classmethod
    def _loop(cls, v: str) -> str:
        try:
            return check_event_loop(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("notify")
    @classmethod
    def _destination(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return check_destination(v)
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None


__all__ = ["WorkerSettings"]
