"""The policy state file: a round trip for every policy, and files that are
ignored (with a log line) rather than trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from autoscaler.policy import DefaultPolicy, PolicyConfig, PolicyState
from autoscaler.registry import POLICIES
from autoscaler.state_store import StateStore
from autoscaler.types import Policy, Snapshot

pytestmark = pytest.mark.unit


def _snap(now: float, rate: float, desired: int) -> Snapshot:
    return Snapshot(
        now=now,
        backlog=int(rate),
        arrival_rate=rate,
        per_instance_rps=50.0,
        busy_fraction=0.5,
        gpu_utilization=None,
        in_service=desired,
        pending=0,
        desired=desired,
    )


def _lived(policy: Policy[Any]) -> Any:
    """A state with something in it: a burst and its tail."""
    state = policy.initial_state()
    desired = 2
    for i, rate in enumerate([10.0] * 30 + [400.0] * 20 + [10.0] * 30):
        decision, state = policy.decide(_snap(1.7e9 + 5 * i, rate, desired), state)
        desired = decision.desired
    return state


@pytest.mark.parametrize("kind", sorted(POLICIES.names()))
def test_every_policy_state_round_trips(kind: str, tmp_path: Path) -> None:
    params = {"capacity": 3} if kind == "static" else {}
    policy = POLICIES.get(kind).create(params)
    state = _lived(policy)
    store = StateStore(tmp_path / "s.json")
    store.save(policy, state)
    back = store.load(policy)
    assert back == state
    if state is not None:
        assert back != policy.initial_state()  # the test state had something to keep


def test_default_state_keeps_learned_surges(tmp_path: Path) -> None:
    state = PolicyState(
        last_out_at=1.7e9, surge_onsets=(1.7e9 - 600, 1.7e9), surge_peak=9, needs=((1.7e9, 8.5),)
    )
    store = StateStore(tmp_path / "s.json")
    store.save(DefaultPolicy(), state)
    assert store.load(DefaultPolicy()) == state


def test_default_state_keeps_its_daily_history_compactly(tmp_path: Path) -> None:
    """Two days of history at the default resolution, as integers: the file
    stays well under an SSM parameter's 8 KB."""
    policy = DefaultPolicy(PolicyConfig(daily_floor=1.0))
    state = policy.initial_state()
    for i in range(2 * 288):  # two days, every 5 minutes
        _, state = policy.decide(_snap(1.7e9 + 300 * i, 50.0 + i % 97, 3), state)
    store = StateStore(tmp_path / "s.json")
    store.save(policy, state)
    assert store.load(policy) == state
    assert len(state.daily) >= 288
    assert (tmp_path / "s.json").stat().st_size < 4096


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param("{not json", "unreadable", id="not-json"),
        pytest.param(json.dumps({"version": 99}), "not used", id="other-version"),
        pytest.param(
            json.dumps({"version": 1, "policy": "keda", "state_type": "KedaState", "state": {}}),
            "not used",
            id="other-policy",
        ),
        pytest.param(
            json.dumps(
                {
                    "version": 1,
                    "policy": "default",
                    "state_type": "PolicyState",
                    "state": {"last_out_at": "yesterday"},
                }
            ),
            "invalid",
            id="bad-field",
        ),
    ],
)
def test_unusable_files_are_ignored(content: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    with capture_logs() as logs:
        assert StateStore(path).load(DefaultPolicy()) is None
    assert any(why in e["event"] for e in logs)


def test_no_file_is_a_fresh_start(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "absent.json").load(DefaultPolicy()) is None


def test_an_unwritable_place_is_logged_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = StateStore(tmp_path / "file" / "s.json")  # a file where a directory must be
    with capture_logs() as logs:
        store.save(DefaultPolicy(), PolicyState(last_out_at=1.0))
    assert any(e["event"] == "policy state not saved" for e in logs)
