"""The autoscaler's configuration file (TOML), validated with pydantic.

A minimal file::

    broker = "amqp://guest:guest@127.0.0.1:5672/"
    models = ["digits"]
    poll_interval_s = 5.0

    [policy]
    kind = "default"          # default | target-tracking | keda | static
    # ...that policy's own parameters, passed through unchanged

    [actuator]
    kind = "ec2"              # ec2 | local | dry-run
    group_name = "fleet-workers"
    region = "us-east-1"

    [metrics]
    port = 9102

``deploy/autoscaler.example.toml`` carries every field with a comment. A bad
file raises :class:`fleet.errors.ConfigError` whose message lists each bad
field as ``location: reason``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.contract import check_model_name
from fleet.errors import ConfigError, InvalidArgument

PolicyKind = Literal["default", "target-tracking", "keda", "static"]
BROKER_SCHEMES = ("memory", "amqp", "amqps", "kafka")


def default_worker_command() -> list[str]:
    """``python -m fleet worker`` with the interpreter running the autoscaler."""
    return [sys.executable, "-m", "fleet", "worker"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySection(BaseModel):
    """``[policy]``: which policy decides, and its parameters.

    ``kind`` picks the policy; every other key in the table is handed unchanged
    to that policy's own configuration class, which validates it (an unknown or
    bad parameter is reported as ``policy.<name>``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: PolicyKind = "default"

    @property
    def params(self) -> dict[str, Any]:
        """The policy's parameters: every key of the table except ``kind``."""
        return dict(self.model_extra or {})


class Ec2ActuatorConfig(_Section):
    """``[actuator] kind = "ec2"``: an EC2 Auto Scaling Group's desired capacity."""

    kind: Literal["ec2"]
    group_name: str = Field(min_length=1, max_length=255)
    """The Auto Scaling Group's name."""
    region: str = Field(default="us-east-1", min_length=1)
    """The AWS region of the group."""
    endpoint_url: str | None = None
    """Another Auto Scaling endpoint (a local emulator in tests); ``None``: AWS."""
    instance_protection: bool = False
    """Protect in-service instances from scale-in and unprotect only the ones
    chosen to go (the least busy by their heartbeats), so the group never
    terminates a worker that is busy."""
    max_attempts: int = Field(default=6, ge=1, le=20)
    """Attempts per AWS call when throttled or the endpoint is unreachable."""
    backoff_base_s: float = Field(default=0.2, gt=0, le=30)
    """First retry delay; doubles each attempt, with full jitter."""
    backoff_max_s: float = Field(default=5.0, gt=0, le=120)
    """Cap on one retry delay."""


class LocalActuatorConfig(_Section):
    """``[actuator] kind = "local"``: ``fleet worker`` processes on this machine."""

    kind: Literal["local"]
    models_dir: Path
    """The model repository the workers serve (``--models``)."""
    command: list[str] = Field(default_factory=default_worker_command, min_length=1)
    """The worker command; ``--broker``, ``--models``, ``--worker-id`` and
    ``--http-port 0`` are appended. Default: this interpreter's ``-m fleet worker``."""
    extra_args: list[str] = Field(default_factory=list)
    """More arguments appended after the standard ones."""
    max_workers: int = Field(default=4, ge=1, le=256)
    """Hard cap on worker processes (the local equivalent of a group's MaxSize)."""
    min_workers: int = Field(default=0, ge=0)
    """Floor on worker processes (the local equivalent of a group's MinSize)."""
    grace_period_s: float = Field(default=30.0, gt=0)
    """How long a worker sent SIGTERM may take to drain before it is killed."""
    log_dir: Path | None = None
    """Where each worker's output goes (``<worker_id>.log``); ``None``: inherited."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for the workers, e.g. ``{ FLEET_HEARTBEAT_INTERVAL = "1" }``."""
    restart_backoff_s: float = Field(default=1.0, ge=0)
    """Delay before a worker that died unexpectedly is replaced (doubles while
    workers keep dying, up to 60 s)."""


class DryRunActuatorConfig(_Section):
    """``[actuator] kind = "dry-run"``: decides and logs; changes nothing."""

    kind: Literal["dry-run"]
    initial_capacity: int = Field(default=0, ge=0)
    """The capacity it pretends is in service at start."""
    max_capacity: int | None = Field(default=None, ge=0)
    """Optional clamp, to rehearse a group's MaxSize."""


ActuatorConfig = Annotated[
    Ec2ActuatorConfig | LocalActuatorConfig | DryRunActuatorConfig,
    Field(discriminator="kind"),
]


class MetricsConfig(_Section):
    """``[metrics]``: Prometheus ``/metrics`` and optional CloudWatch metrics."""

    enabled: bool = True
    """Serve ``/metrics`` and ``/healthz`` over HTTP."""
    host: str = "127.0.0.1"
    """Address that endpoint listens on."""
    port: int = Field(default=9102, ge=0, le=65535)
    """Its port; 0 picks a free one."""
    cloudwatch_namespace: str | None = Field(default=None, min_length=1, max_length=255)
    """Publish custom metrics (backlog per instance, desired capacity, decision)
    to CloudWatch under this namespace every poll; ``None``: off."""
    cloudwatch_region: str | None = None
    """Region for CloudWatch; default: the ec2 actuator's, else ``us-east-1``."""
    cloudwatch_endpoint_url: str | None = None
    """Another CloudWatch endpoint (a local emulator in tests)."""
    cloudwatch_dimensions: dict[str, str] = Field(default_factory=dict)
    """Dimensions on every CloudWatch datum, e.g. ``{ AutoScalingGroupName = "x" }``."""


class AutoscalerConfig(_Section):
    """The whole file. Every field but ``broker``, ``models`` and ``[actuator]``
    has a default."""

    broker: str
    """Broker URL the workers use: ``amqp://…``, ``kafka://…`` or ``memory://…``."""
    models: list[str] = Field(min_length=1)
    """The models whose backlog this autoscaler watches (summed)."""
    poll_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between decisions."""
    per_instance_rps: float | None = Field(default=None, gt=0)
    """Requests/s one instance sustains, used until heartbeats measure it."""
    arrival_smoothing_s: float = Field(default=10.0, ge=0)
    """Time constant of the arrival-rate EWMA (0: no smoothing)."""
    min_busy_fraction: float = Field(default=0.25, gt=0, le=1)
    """Below this busy fraction a worker's throughput says little about what it
    could sustain, so ``per_instance_rps`` (or the last measurement) is used."""
    declare_queues: bool = True
    """Declare the watched models' queues/topics at start, so requests can wait
    for the first worker (scale from zero)."""
    policy: PolicySection = Field(default_factory=PolicySection)
    actuator: ActuatorConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("broker")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"must be a URL with scheme {', '.join(BROKER_SCHEMES)}")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                check_model_name(name)
            except InvalidArgument as exc:
                raise ValueError(exc.message) from None
        if len(set(value)) != len(value):
            raise ValueError("lists a model twice")
        return value


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("ec2", "local", "dry-run") and parts == ["actuator"]:
            continue  # the discriminated union's tag adds nothing for a reader
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(file)"


def format_errors(exc: ValidationError, *, prefix: str = "") -> list[str]:
    """One ``location: reason`` line per bad field."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _location(tuple(err["loc"]))
        if prefix:
            loc = prefix if loc == "(file)" else f"{prefix}.{loc}"
        msg = str(err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}")
    return lines


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> AutoscalerConfig:
    """Validate a parsed TOML document (``source`` names it in errors)."""
    try:
        cfg = AutoscalerConfig.model_validate(data)
    except ValidationError as exc:
        lines = format_errors(exc)
        policy = data.get("policy")
        if isinstance(policy, dict) and not any(ln.startswith("policy") for ln in lines):
            lines += _policy_errors(policy)  # every bad field at once, the policy's too
        raise ConfigError(
            f"{source}: {len(lines)} bad field(s):\n  " + "\n  ".join(lines)
        ) from None
    lines = _policy_errors(cfg.policy)
    if lines:
        raise ConfigError(f"{source}: {len(lines)} bad field(s):\n  " + "\n  ".join(lines))
    return cfg


def _policy_errors(policy: PolicySection | dict[str, Any]) -> list[str]:
    # Build the policy once so that a bad policy parameter is reported at load
    # time, like every other field. A policy module that is not installed is
    # reported by build_policy when the autoscaler starts.
    from autoscaler.factory import PolicyUnavailable, build_policy

    try:
        section = (
            policy if isinstance(policy, PolicySection) else PolicySection.model_validate(policy)
        )
        build_policy(section)
    except (PolicyUnavailable, ValidationError):
        return []
    except ConfigError as exc:
        return [ln.strip() for ln in exc.message.splitlines()[1:] if ln.strip()] or [exc.message]
    return []


def load_config(path: str | Path) -> AutoscalerConfig:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p))


__all__ = [
    "ActuatorConfig",
    "AutoscalerConfig",
    "DryRunActuatorConfig",
    "Ec2ActuatorConfig",
    "LocalActuatorConfig",
    "MetricsConfig",
    "PolicyKind",
    "PolicySection",
    "default_worker_command",
    "format_errors",
    "load_config",
    "parse_config",
]
