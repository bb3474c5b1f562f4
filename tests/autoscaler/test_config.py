"""The autoscaler's configuration file: good files load, each bad field is named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from autoscaler.config import (
    DryRunActuatorConfig,
    Ec2ActuatorConfig,
    LocalActuatorConfig,
    load_config,
)
from autoscaler.factory import POLICY_CLASSES, PolicyUnavailable, build_policy
from fleet.errors import ConfigError

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
    assert act.command == [sys.executable, "-m", "fleet", "worker"]
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
    pytest.importorskip("autoscaler.baselines")
    policy: Any = build_policy(cfg.policy)
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
            ('kind = "default"', 'kind = "magic"'), "policy.kind", "'default'", id="policy-kind"
        ),
        pytest.param(
            ('kind = "local"', 'kind = "k8s"'),
            "actuator",
            "'ec2', 'local', 'dry-run'",
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
    pytest.importorskip("autoscaler.policy")
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
    pytest.importorskip("autoscaler.policy")
    text = GOOD.replace('kind = "default"', 'kind = "default"\nmax_capacity = 7\ndrain_time_s = 12')
    policy: Any = build_policy(load_config(_write(tmp_path, text)).policy)
    assert policy.config.max_capacity == 7 and policy.config.drain_time_s == 12.0


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


@pytest.mark.parametrize("kind", sorted(POLICY_CLASSES))
def test_every_policy_kind_builds_or_says_why(tmp_path: Path, kind: str) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            f'broker = "memory://x"\nmodels = ["m"]\n[policy]\nkind = "{kind}"\n'
            '[actuator]\nkind = "dry-run"\n',
        )
    )
    try:
        policy = build_policy(cfg.policy)
    except PolicyUnavailable as exc:
        assert kind in exc.message
        return
    except ConfigError as exc:  # a policy with required parameters names them
        assert "policy." in exc.message
        return
    assert callable(policy.decide)
