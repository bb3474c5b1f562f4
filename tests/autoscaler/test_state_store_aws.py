"""The policy's state kept on AWS (moto's server): an S3 object or an SSM
parameter, written only when it changed, and an autoscaler restarted on
another host carrying on from it."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from structlog.testing import capture_logs

from autoscaler.config import load_config
from autoscaler.policy import DefaultPolicy, PolicyState
from autoscaler.state_store import LocalFile, S3Object, SsmParameter, StateStore, backend_for
from fleet.errors import ConfigError

LIVED = PolicyState(
    last_out_at=1.7e9, surge_onsets=(1.7e9 - 600, 1.7e9), surge_peak=9, needs=((1.7e9, 8.5),)
)


@pytest.fixture
def ssm_name(bucket: str) -> str:
    """A parameter name of this test's own (``bucket`` points boto3 at moto)."""
    return f"/fleet/test-{uuid.uuid4().hex[:8]}/autoscaler-state"


@pytest.mark.aws
@pytest.mark.parametrize("kind", ["s3", "ssm"])
def test_state_round_trips_on_aws(kind: str, bucket: str, ssm_name: str) -> None:
    location = f"s3://{bucket}/autoscaler/state.json" if kind == "s3" else f"ssm:{ssm_name}"
    store = StateStore(location)
    assert store.load(DefaultPolicy()) is None  # nothing saved yet: a fresh start, no error
    store.save(DefaultPolicy(), LIVED)
    with capture_logs() as logs:
        assert StateStore(location).load(DefaultPolicy()) == LIVED  # another process reads it
    assert [e["path"] for e in logs if e["event"] == "policy state restored"] == [location]


@pytest.mark.aws
def test_an_unchanged_state_is_not_rewritten_until_it_is_old(ssm_name: str) -> None:
    ssm = boto3.client("ssm")
    now = [1.7e9]
    store = StateStore(f"ssm:{ssm_name}", clock=lambda: now[0])

    def version() -> int:
        return int(ssm.get_parameter(Name=ssm_name)["Parameter"]["Version"])

    store.save(DefaultPolicy(), LIVED)
    for _ in range(10):  # a poll every 15 s, nothing changed
        now[0] += 15
        store.save(DefaultPolicy(), LIVED)
    assert version() == 1
    now[0] += 1
    store.save(DefaultPolicy(), PolicyState(last_out_at=now[0]))  # changed: written at once
    assert version() == 2
    now[0] += StateStore.REFRESH_S  # unchanged but old: written again, saved_at fresh
    store.save(DefaultPolicy(), PolicyState(last_out_at=now[0] - StateStore.REFRESH_S))
    assert version() == 3


@pytest.mark.aws
def test_a_missing_bucket_is_logged_and_the_loop_goes_on(bucket: str) -> None:
    store = StateStore(f"s3://{bucket}-absent/state.json")
    with capture_logs() as logs:
        store.save(DefaultPolicy(), LIVED)
        assert store.load(DefaultPolicy()) is None
    events = [e["event"] for e in logs]
    assert events == ["policy state not saved", "policy state unreadable: starting afresh"]
    assert "NoSuchBucket" in logs[0]["error"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("location", "kind", "where"),
    [
        ("s3://b/fleet/state.json", S3Object, "s3://b/fleet/state.json"),
        ("ssm:/fleet/prod/state", SsmParameter, "ssm:/fleet/prod/state"),
        ("state/s.json", LocalFile, "state/s.json"),
    ],
)
def test_a_location_names_its_store(location: str, kind: type, where: str) -> None:
    backend = backend_for(location)
    assert isinstance(backend, kind) and str(backend) == where


@pytest.mark.unit
@pytest.mark.parametrize(
    "location", ["s3://bucket-only", "s3://b/", "s3:///key", "ssm:name", "ssm:/", "ssm:/a/", " "]
)
def test_a_malformed_location_is_a_config_error(location: str, tmp_path: Path) -> None:
    path = tmp_path / "autoscaler.toml"
    path.write_text(
        f'broker = "memory://x"\nmodels = ["digits"]\nstate_file = "{location}"\n'
        '[actuator]\nkind = "dry-run"\n'
    )
    with pytest.raises(ConfigError, match="state_file"):
        load_config(path)


@pytest.mark.aws
def test_a_parameter_made_empty_is_a_fresh_start_then_filled(ssm_name: str) -> None:
    """The deployment creates the parameter holding ``{}`` (so that destroying
    the deployment removes it): no state yet, said quietly; then the first save
    fills it."""
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name=ssm_name, Value="{}", Type="String")
    store = StateStore(f"ssm:{ssm_name}")
    with capture_logs() as logs:
        assert store.load(DefaultPolicy()) is None
    assert logs == []
    store.save(DefaultPolicy(), LIVED)
    assert StateStore(f"ssm:{ssm_name}").load(DefaultPolicy()) == LIVED
