"""The autoscaler's configuration file (TOML), validated with pydantic.

A minimal file::

    broker = "amqp://guest:guest@127.0.0.1:5672/"
    models = ["digits"]
    poll_interval_s = 5.0

    [policy]
    kind = "default"          # built in: default | target-tracking | keda | static
    # ...that policy's own parameters, passed through unchanged

    [actuator]
    kind = "ec2"              # built in: ec2 | local | dry-run
    group_name = "fleet-workers"
    region = "us-east-1"

    [metrics]
    port = 9102

``deploy/autoscaler.example.toml`` carries every field with a comment. A bad
file raises :class:`fleet.errors.ConfigError` whose message lists each bad
field as ``location: reason``.

The broker's password need not be in the file: a ``broker`` URL that names a
user and no password (``amqp://fleet@mq:5672/``) takes it from the
environment, ``FLEET_BROKER_PASSWORD``, or the file that
``FLEET_BROKER_PASSWORD_FILE`` names (a mounted secret). Neither the
configuration's ``repr`` nor its errors ever show the password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from autoscaler.actuators.base import ActuatorConfigBase
from autoscaler.registry import ACTUATORS, POLICIES, config_lines, unknown_kind
from autoscaler.state_store import backend_for
from fleet.config_file import bad_fields, error_lines, read_toml
from fleet.contract import check_model_name
from fleet.errors import ConfigError, InvalidArgument
from fleet.settings import BROKER, RedactedRepr, resolve_password
from fleet.transport import TRANSPORTS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySection(BaseModel):
    """``[policy]``: which policy decides, and its parameters.

    ``kind`` names a policy of :data:`autoscaler.registry.POLICIES`; every
    other key in the table is handed unchanged to that policy's own
    configuration class, which validates it (an unknown or bad parameter is
    reported as ``policy.<name>``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = "default"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(unknown_kind(POLICIES, value))
        return value

    @property
    def params(self) -> dict[str, Any]:
        """The policy's parameters: every key of the table except ``kind``."""
        return dict(self.model_extra or {})


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


class AutoscalerConfig(RedactedRepr, _Section):
    """The whole file. Every field but ``broker``, ``models`` and ``[actuator]``
    has a default."""

    broker: str
    """Broker URL the workers use: ``amqp://…``, ``kafka://…`` or ``memory://…``.
    Without a password (``amqp://fleet@mq/``) it takes ``FLEET_BROKER_PASSWORD``
    or the contents of the file ``FLEET_BROKER_PASSWORD_FILE`` names."""
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
    state_file: str | None = None
    """Where the policy's state (cooldowns, the scale-in stabilization window,
    learned surges) is kept across restarts: a local path, ``s3://BUCKET/KEY``
    or ``ssm:/NAME``; ``None``: a restarted autoscaler starts afresh."""
    policy: PolicySection = Field(default_factory=PolicySection)
    actuator: SerializeAsAny[ActuatorConfigBase]
    """Validated by the model of the actuator its ``kind`` names (see
    :func:`parse_config`)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("broker")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in TRANSPORTS:
            raise ValueError(f"must be a URL with scheme {', '.join(TRANSPORTS.names())}")
        try:
            return resolve_password(value, BROKER)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("state_file")
    @classmethod
    def _state_location(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("must name a file, s3://BUCKET/KEY or ssm:/NAME")
            backend_for(value)  # a malformed s3:// or ssm: location is refused here
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


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> AutoscalerConfig:
    """Validate a parsed TOML document (``source`` names it in errors); every
    bad field, the policy's and the actuator's included, is listed at once."""
    actuator, lines = _actuator(data)
    top = {k: v for k, v in data.items() if k != "actuator"}
    if actuator is not None:
        top["actuator"] = actuator
    try:
        cfg = AutoscalerConfig.model_validate(top)
    except ValidationError as exc:
        found = error_lines(exc)
        if "actuator" in data:  # reported above, not as missing
            found = [ln for ln in found if not ln.startswith("actuator")]
        lines = found + lines
        cfg = None
    policy = data.get("policy", {})
    if isinstance(policy, dict) and not any(ln.startswith("policy") for ln in lines):
        lines += _policy_lines(policy)
    if lines or cfg is None:
        raise bad_fields(source, lines)
    return cfg


def _actuator(data: dict[str, Any]) -> tuple[ActuatorConfigBase | None, list[str]]:
    """The ``[actuator]`` table validated by its kind's model, or the lines
    naming what is wrong with it (none when it is absent)."""
    if "actuator" not in data:
        return None, []
    table = data["actuator"]
    if not isinstance(table, dict):
        return None, ["actuator: Input should be a valid dictionary"]
    kind = table.get("kind")
    if kind is None:
        return None, ["actuator.kind: Field required"]
    if not isinstance(kind, str) or kind not in ACTUATORS:
        return None, [f"actuator.kind: {unknown_kind(ACTUATORS, kind)}"]
    config = ACTUATORS.get(kind).config
    lines = config_lines(config, table, prefix="actuator")
    if lines:
        return None, lines
    return ACTUATORS.get(kind).parse(table), []


def _policy_lines(policy: dict[str, Any]) -> list[str]:
    """Bad parameters of a ``[policy]`` table whose kind is known."""
    kind = policy.get("kind", "default")
    if not isinstance(kind, str) or kind not in POLICIES:
        return []
    params = {k: v for k, v in policy.items() if k != "kind"}
    return config_lines(POLICIES.get(kind).config, params, prefix="policy")


def load_config(path: str | Path) -> AutoscalerConfig:
    """Read and validate a TOML configuration file."""
    return parse_config(read_toml(path), source=str(Path(path)))


__all__ = [
    "AutoscalerConfig",
    "MetricsConfig",
    "PolicySection",
    "load_config",
    "parse_config",
]
