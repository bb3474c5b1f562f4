"""The autoscaler's configuration file: good files load, each bad field is named."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from autoscaler.actuators.base import ActuatorConfigBase
from autoscaler.actuators.dry_run import DryRunActuator, DryRunActuatorConfig
from autoscaler.actuators.ec2 import Ec2ActuatorConfig
from autoscaler.actuators.local import LocalActuatorConfig
from autoscaler.baselines import KedaPolicy, StaticPolicy, TargetTrackingPolicy
from autoscaler.config import load_config, parse_config
from autoscaler.factory import build_actuator, build_policy
from autoscaler.loop import from_config
from autoscaler.policy import DefaultPolicy
from autoscaler.registry import ACTUATORS, POLICIES, ActuatorContext, ActuatorSpec, PolicySpec
from autoscaler.types import Decision, Policy, Snapshot
from fleet.errors import ConfigError
from fleet.transport.memory import MemoryBroker
from fleet.worker_command import worker_command

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "autoscaler.example.toml"

GOOD = """
broker = "amqp://guest:guest@127.0.0.1:5672/"
models = ["digits", "mlp"]
poll_interval_s = 2.5
per_instance_rps = 350.0

[policy]
kind = "default"

[actuator]
kind = "local"
models_dir = "models"
max_workers = 3
grace_period_s = 10
env = { FLEET_HEARTBEAT_INTERVAL = "1" }

[metrics]
port = 0
cloudwatch_namespace = "Fleet/Autoscaler"
cloudwatch_dimensions = { AutoScalingGroupName = "g" }
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "autoscaler.toml"
    p.write_text(text)
    return p


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return info.value.message


def test_the_example_file_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg.actuator, Ec2ActuatorConfig)
    assert cfg.actuator.group_name == "fleet-workers"
    assert cfg.models == ["digits"]
    assert cfg.state_file == ".cache/autoscaler-state.json"


def test_a_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.broker.startswith("amqp://")
    assert cfg.models == ["digits", "mlp"]
    assert cfg.poll_interval_s == 2.5
    assert cfg.per_instance_rps == 350.0
    assert cfg.policy.kind == "default"
    act = cfg.actuator
    assert isinstance(act, LocalActuatorConfig)
    assert act.models_dir == Path("models")
    assert act.max_workers == 3
    assert act.command == worker_command() == [sys.executable, "-m", "fleetctl", "worker"]
    assert act.env == {"FLEET_HEARTBEAT_INTERVAL": "1"}
    assert cfg.metrics.port == 0
    assert cfg.metrics.cloudwatch_namespace == "Fleet/Autoscaler"


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, 'broker = "memory://x"\nmodels = ["m"]\n[actuator]\nkind = "dry-run"\n')
    )
    assert cfg.poll_interval_s == 5.0
    assert cfg.per_instance_rps is None
    assert cfg.policy.kind == "default" and cfg.policy.params == {}
    assert isinstance(cfg.actuator, DryRunActuatorConfig)
    assert cfg.actuator.initial_capacity == 0
    assert cfg.metrics.enabled and cfg.metrics.cloudwatch_namespace is None


def test_policy_parameters_pass_through(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "default"', 'kind = "keda"\nqueue_length = 50')
    cfg = load_config(_write(tmp_path, text))
    assert cfg.policy.kind == "keda"
    assert cfg.policy.params == {"queue_length": 50}
    policy = build_policy(cfg.policy)
    assert isinstance(policy, KedaPolicy)
    assert policy.config.queue_length == 50.0


@pytest.mark.parametrize(
    ("edit", "location", "reason"),
    [
        pytest.param(
            ("broker = ", "broker = 'http://x' #"), "broker", "scheme", id="broker-scheme"
        ),
        pytest.param(
            ('models = ["digits", "mlp"]', "models = []"), "models", "at least 1", id="no-models"
        ),
        pytest.param(('"mlp"]', '"no/slash"]'), "models", "model name", id="model-name"),
        pytest.param(('"mlp"]', '"digits"]'), "models", "twice", id="model-twice"),
        pytest.param(
            ("poll_interval_s = 2.5", "poll_interval_s = 0"),
            "poll_interval_s",
            "greater than 0",
            id="poll",
        ),
        pytest.param(
            ("poll_interval_s = 2.5", 'poll_interval_s = "fast"'),
            "poll_interval_s",
            "number",
            id="poll-type",
        ),
        pytest.param(
            ("per_instance_rps = 350.0", "per_instance_rps = -1"),
            "per_instance_rps",
            "greater than 0",
            id="rps",
        ),
        pytest.param(
            ("per_instance_rps = 350.0", "per_instance_rps = 1\nreplicas = 3"),
            "replicas",
            "unknown field",
            id="unknown-top",
        ),
        pytest.param(
            ('kind = "default"', 'kind = "magic"'),
            "policy.kind",
            "'magic'; must be one of 'default', 'keda', 'static', 'target-tracking'",
            id="policy-kind",
        ),
        pytest.param(
            ('kind = "local"', 'kind = "k8s"'),
            "actuator.kind",
            "'k8s'; must be one of 'dry-run', 'ec2', 'local'",
            id="actuator-kind",
        ),
        pytest.param(
            ("max_workers = 3", "max_workers = 0"),
            "actuator.max_workers",
            "greater than or equal to 1",
            id="max-workers",
        ),
        pytest.param(
            ("grace_period_s = 10", "grace_period_s = 10\nspeed = 1"),
            "actuator.speed",
            "unknown field",
            id="unknown-actuator",
        ),
        pytest.param(
            ('models_dir = "models"', "models_dir = 3"),
            "actuator.models_dir",
            "path",
            id="models-dir",
        ),
        pytest.param(
            ("port = 0", "port = 70000"), "metrics.port", "less than or equal to 65535", id="port"
        ),
        pytest.param(
            ("port = 0", "port = 0\ncolour = 1"),
            "metrics.colour",
            "unknown field",
            id="unknown-metrics",
        ),
    ],
)
def test_each_bad_field_is_named(
    tmp_path: Path, edit: tuple[str, str], location: str, reason: str
) -> None:
    old, new = edit
    assert old in GOOD
    message = _error(tmp_path, GOOD.replace(old, new, 1))
    line = next((ln for ln in message.splitlines() if ln.strip().startswith(location)), None)
    assert line is not None, message
    assert reason.lower() in line.lower(), message


def test_every_bad_field_is_listed_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("poll_interval_s = 2.5", "poll_interval_s = -1").replace(
        "max_workers = 3", "max_workers = 0"
    )
    message = _error(tmp_path, text)
    assert "2 bad field(s)" in message
    assert "poll_interval_s:" in message and "actuator.max_workers:" in message
    assert str(tmp_path) in message


def test_bad_policy_parameters_are_named(tmp_path: Path) -> None:
    text = GOOD.replace(
        'kind = "default"', 'kind = "default"\nmin_capacity = "many"\nwarp_speed = 9'
    )
    message = _error(tmp_path, text)
    assert "policy.warp_speed: unknown field" in message
    text = GOOD.replace('kind = "default"', 'kind = "default"\nmin_capacity = "many"')
    assert "policy.min_capacity: Input should be a valid integer" in _error(tmp_path, text)
    text = GOOD.replace('kind = "default"', 'kind = "default"\nmin_capacity = 9\nmax_capacity = 2')
    assert "min_capacity <= max_capacity" in _error(tmp_path, text)


def test_default_policy_parameters_reach_the_policy(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "default"', 'kind = "default"\nmax_capacity = 7\ndrain_time_s = 12')
    policy = build_policy(load_config(_write(tmp_path, text)).policy)
    assert isinstance(policy, DefaultPolicy)
    assert policy.config.max_capacity == 7 and policy.config.drain_time_s == 12.0


def test_a_daily_floor_is_configured_and_checked(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "default"', 'kind = "default"\ndaily_floor = 0.9\nhistory_days = 3')
    policy = build_policy(load_config(_write(tmp_path, text)).policy)
    assert isinstance(policy, DefaultPolicy)
    assert (policy.config.daily_floor, policy.config.history_days) == (0.9, 3)
    text = GOOD.replace('kind = "default"', 'kind = "default"\ndaily_floor = 2.0')
    assert "0 <= daily_floor <= 1" in _error(tmp_path, text)


def test_missing_required_fields(tmp_path: Path) -> None:
    message = _error(tmp_path, "poll_interval_s = 1\n")
    for field in ("broker", "models", "actuator"):
        assert f"{field}: Field required" in message


def test_ec2_needs_a_group_name(tmp_path: Path) -> None:
    message = _error(tmp_path, 'broker = "memory://x"\nmodels = ["m"]\n[actuator]\nkind = "ec2"\n')
    assert "actuator.group_name: Field required" in message


def test_not_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in _error(tmp_path, "broker = \n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


BUILT_IN_POLICIES: dict[str, type[Policy[Any]]] = {
    "default": DefaultPolicy,
    "target-tracking": TargetTrackingPolicy,
    "keda": KedaPolicy,
    "static": StaticPolicy,
}


def test_the_built_in_kinds_are_registered() -> None:
    assert set(BUILT_IN_POLICIES) <= set(POLICIES.names())
    assert {"ec2", "local", "dry-run"} <= set(ACTUATORS.names())


@pytest.mark.parametrize("kind", sorted(BUILT_IN_POLICIES))
def test_every_policy_kind_builds_with_its_defaults(tmp_path: Path, kind: str) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            f'broker = "memory://x"\nmodels = ["m"]\n[policy]\nkind = "{kind}"\n'
            '[actuator]\nkind = "dry-run"\n',
        )
    )
    policy = build_policy(cfg.policy)
    assert type(policy) is BUILT_IN_POLICIES[kind]
    assert policy.name == kind
    assert policy.config == type(policy.config)()  # type: ignore[attr-defined]


def test_a_dict_that_is_not_a_table_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": "memory://x", "models": ["m"], "actuator": "dry-run"})
    assert "actuator: Input should be a valid dictionary" in info.value.message
    with pytest.raises(ConfigError) as info:
        parse_config({"broker": "memory://x", "models": ["m"], "actuator": {}})
    assert "actuator.kind: Field required" in info.value.message


# --------------------------------------------------------------------------- plug-ins


@dataclass(frozen=True, kw_only=True)
class LevelConfig:
    level: int = 1

    def __post_init__(self) -> None:
        if self.level < 0:
            raise ValueError("level must not be negative")


class LevelPolicy(Policy[None]):
    """Always ``level`` instances."""

    name = "level"

    def __init__(self, config: LevelConfig) -> None:
        self.config = config

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Decision, None]:
        return Decision.to(snapshot.desired, self.config.level, "level"), None


LEVEL = PolicySpec(name="level", config=LevelConfig, build=LevelPolicy)


class RecordingConfig(ActuatorConfigBase):
    kind: Literal["recording"]
    start_with: int = Field(default=0, ge=0)
    region: str = "eu-west-1"

    def aws_region(self) -> str | None:
        return self.region


class RecordingActuator(DryRunActuator):
    kind = "recording"

    def __init__(self, start_with: int, broker: str) -> None:
        super().__init__(initial_capacity=start_with)
        self.broker = broker


RECORDING = ActuatorSpec(
    name="recording",
    config=RecordingConfig,
    build=lambda cfg, ctx: RecordingActuator(cfg.start_with, ctx.broker),
)

PLUGIN = """
broker = "memory://{name}"
models = ["m"]
[policy]
kind = "level"
level = 3
[actuator]
kind = "recording"
start_with = 2
[metrics]
enabled = false
cloudwatch_namespace = "Fleet/Test"
"""


async def test_a_registered_policy_and_actuator_are_accepted_and_built() -> None:
    import tomllib

    name = f"plugin-{uuid.uuid4().hex[:6]}"
    with POLICIES.registered(LEVEL), ACTUATORS.registered(RECORDING):
        cfg = parse_config(tomllib.loads(PLUGIN.format(name=name)))
        assert cfg.policy.kind == "level" and cfg.policy.params == {"level": 3}
        assert isinstance(cfg.actuator, RecordingConfig) and cfg.actuator.start_with == 2
        policy = build_policy(cfg.policy)
        assert isinstance(policy, LevelPolicy) and policy.config == LevelConfig(level=3)
        actuator = build_actuator(cfg)
        assert isinstance(actuator, RecordingActuator)
        assert actuator.broker == f"memory://{name}"
        scaler = await from_config(cfg)
        try:
            assert isinstance(scaler.policy, LevelPolicy)
            assert isinstance(scaler.actuator, RecordingActuator)
            assert (
                scaler.cloudwatch is not None
                and scaler.cloudwatch.client.meta.region_name == "eu-west-1"
            )
            decision = await scaler.run_once()
            assert (decision.desired, decision.direction) == (3, "out")
        finally:
            await scaler.close()
            MemoryBroker.reset(name)
    assert "level" not in POLICIES.names() and "recording" not in ACTUATORS.names()


def test_a_registered_kinds_bad_fields_are_named_at_once() -> None:
    data = {
        "broker": "memory://x",
        "models": ["m"],
        "policy": {"kind": "level", "level": -1, "speed": 2},
        "actuator": {"kind": "recording", "start_with": -1},
    }
    with POLICIES.registered(LEVEL), ACTUATORS.registered(RECORDING):
        with pytest.raises(ConfigError) as info:
            parse_config(data)
    message = info.value.message
    assert "2 bad field(s)" in message
    assert "policy.speed: unknown field" in message
    assert "actuator.start_with: Input should be greater than or equal to 0" in message
    data["policy"] = {"kind": "level", "level": -1}
    with POLICIES.registered(LEVEL), ACTUATORS.registered(RECORDING):
        with pytest.raises(ConfigError, match="level must not be negative"):
            parse_config(data)


def test_an_unknown_kind_lists_the_known_ones_registered_included() -> None:
    data = {
        "broker": "memory://x",
        "models": ["m"],
        "policy": {"kind": "magic"},
        "actuator": {"kind": "k8s"},
    }
    with POLICIES.registered(LEVEL), ACTUATORS.registered(RECORDING):
        with pytest.raises(ConfigError) as info:
            parse_config(data)
    lines = info.value.message.splitlines()
    assert lines[0] == "<config>: 2 bad field(s):"
    policy = next(ln for ln in lines if ln.strip().startswith("policy.kind:"))
    for kind in (*BUILT_IN_POLICIES, "level"):
        assert repr(kind) in policy
    actuator = next(ln for ln in lines if ln.strip().startswith("actuator.kind:"))
    for kind in ("ec2", "local", "dry-run", "recording"):
        assert repr(kind) in actuator


def test_the_actuator_spec_refuses_another_kinds_config() -> None:
    with pytest.raises(ConfigError, match="takes a RecordingConfig"):
        RECORDING.create(DryRunActuatorConfig(kind="dry-run"), ActuatorContext(broker="memory://x"))
