"""The ``ec2`` actuator against moto's AWS server over real HTTP.

The server comes from ``FLEET_TEST_AWS_URL`` (``scripts/moto.sh start`` prints
it). A group is made from a launch template in a VPC subnet; scaling through
the actuator must change moto's EC2 instances, the clamp to the group's
``MaxSize`` must hold (moto does not enforce it on ``SetDesiredCapacity``),
and throttling must be retried (by botocore's own retry mode, which sees the
throttling answers injected just before a request is sent).
"""

from __future__ import annotations

import os
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.stub import Stubber
from structlog.testing import capture_logs

from autoscaler.actuators.ec2 import Ec2Actuator, Ec2ActuatorConfig
from fleet import aws
from fleet.errors import ConfigError, Internal, Unavailable
from fleet.heartbeat import Heartbeat
from tests.aws_answers import answer, error_body
from tests.conftest import missing

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key; never pick up a real profile from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry delays, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=delays.append))
    return delays


# --------------------------------------------------------------------------- moto


@pytest.fixture
def aws_url() -> str:
    url = os.environ.get("FLEET_TEST_AWS_URL")
    if not url:
        missing("FLEET_TEST_AWS_URL is not set; run scripts/moto.sh start (or scripts/test.sh)")
    assert url is not None
    return url


@dataclass
class Group:
    name: str
    asg: Any
    ec2: Any

    def describe(self) -> dict[str, Any]:
        groups = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        return dict(groups["AutoScalingGroups"][0])

    def instance_ids(self) -> set[str]:
        return {i["InstanceId"] for i in self.describe()["Instances"]}

    def ec2_states(self, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        resp = self.ec2.describe_instances(InstanceIds=sorted(ids))
        return {
            i["InstanceId"]: i["State"]["Name"]
            for r in resp["Reservations"]
            for i in r["Instances"]
        }

    def running_in_ec2(self) -> set[str]:
        """Instances moto's EC2 runs for this group (by the group's tag)."""
        resp = self.ec2.describe_instances(
            Filters=[
                {"Name": "tag:aws:autoscaling:groupName", "Values": [self.name]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        return {i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]}


@pytest.fixture
def group(aws_url: str) -> Iterator[Group]:
    asg = boto3.client("autoscaling", region_name=REGION, endpoint_url=aws_url)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=aws_url)
    suffix = uuid.uuid4().hex[:8]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    template = f"fleet-worker-{suffix}"
    ec2.create_launch_template(
        LaunchTemplateName=template,
        LaunchTemplateData={"ImageId": image, "InstanceType": "g4dn.xlarge"},
    )
    name = f"fleet-workers-{suffix}"
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
        MinSize=0,
        MaxSize=3,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
    )
    yield Group(name=name, asg=asg, ec2=ec2)
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateName=template)


def _actuator(aws_url: str, group: Group, **kw: Any) -> Ec2Actuator:
    return Ec2Actuator(group.name, region=REGION, endpoint_url=aws_url, **kw)


@pytest.mark.aws
async def test_scale_out_and_in_changes_moto_instances(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group)
    await act.start()
    assert await act.capacity() == (0, 0, 0, None)  # no warm pool

    assert await act.set_desired(2, ("backlog",)) == 2
    ids = group.instance_ids()
    assert len(ids) == 2
    assert group.running_in_ec2() == ids
    in_service, pending, desired, _warm = await act.capacity()
    assert (in_service + pending, desired) == (2, 2)

    assert await act.set_desired(1, ("idle",)) == 1
    left = group.instance_ids()
    assert len(left) == 1 and left < ids
    gone = ids - left
    assert set(group.ec2_states(gone).values()) <= {"shutting-down", "terminated"}
    assert group.running_in_ec2() == left

    assert await act.set_desired(0) == 0
    assert group.running_in_ec2() == set()
    assert group.describe()["DesiredCapacity"] == 0
    await act.close()


@pytest.mark.aws
async def test_clamped_to_the_groups_max_and_min(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group)
    assert await act.set_desired(10) == 3  # MaxSize
    assert group.describe()["DesiredCapacity"] == 3
    assert len(group.running_in_ec2()) == 3

    group.asg.update_auto_scaling_group(AutoScalingGroupName=group.name, MinSize=1, MaxSize=2)
    assert await act.set_desired(5) == 2  # bounds are read afresh
    assert await act.set_desired(-4) == 1
    assert group.describe()["DesiredCapacity"] == 1
    assert len(group.running_in_ec2()) == 1


@pytest.mark.aws
async def test_missing_group_is_a_config_error(aws_url: str) -> None:
    act = Ec2Actuator("no-such-group", region=REGION, endpoint_url=aws_url)
    with pytest.raises(ConfigError, match="does not exist"):
        await act.capacity()


@pytest.mark.aws
async def test_instance_protection_keeps_the_busy_worker(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group, instance_protection=True)
    await act.set_desired(3)
    await act.capacity()  # protects what is in service
    described = group.describe()["Instances"]
    assert all(i["ProtectedFromScaleIn"] for i in described)
    ids = sorted(i["InstanceId"] for i in described)
    # every worker busy except ids[1]
    for iid in ids:
        beat = Heartbeat(
            worker_id=f"w-{iid}",
            instance_id=iid,
            sent_at=0.0,
            in_flight=0 if iid == ids[1] else 5,
            busy_fraction=0.0 if iid == ids[1] else 0.9,
        )
        act.observe_heartbeat(beat, 0.0)
    assert await act.set_desired(2) == 2
    assert group.instance_ids() == {ids[0], ids[2]}


def _busy_except(act: Ec2Actuator, ids: list[str], idle: set[str]) -> None:
    """Heartbeats: every worker busy except those in ``idle``. Workers carry
    their instance id as their worker id (``instance_id`` unset)."""
    for iid in ids:
        beat = Heartbeat(
            worker_id=iid,
            sent_at=0.0,
            in_flight=0 if iid in idle else 5,
            busy_fraction=0.0 if iid in idle else 0.9,
        )
        act.observe_heartbeat(beat, 0.0)


@pytest.mark.aws
async def test_a_leaving_instance_is_not_protected_again_before_it_goes(
    aws_url: str, group: Group
) -> None:
    """The group terminates some time after ``SetDesiredCapacity``; a poll in
    between must not protect the chosen instance again, or the group cannot
    terminate it and runs more instances than desired for good."""
    act = _actuator(aws_url, group, instance_protection=True)
    await act.set_desired(3)
    await act.capacity()
    ids = sorted(group.instance_ids())
    _busy_except(act, ids, {ids[1]})
    # the group takes the new desired capacity now and terminates later
    answer(act.client, "auto-scaling.SetDesiredCapacity", [(200, _SET_XML)])
    assert await act.set_desired(2) == 2
    await act.capacity()  # a poll before the group got round to it
    protected = {
        i["InstanceId"] for i in group.describe()["Instances"] if i["ProtectedFromScaleIn"]
    }
    assert protected == {ids[0], ids[2]}
    group.asg.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=2)
    assert group.instance_ids() == {ids[0], ids[2]}
    assert await act.capacity() == (2, 0, 2, None)


@pytest.mark.aws
async def test_victims_are_counted_from_the_instances_not_the_desired_capacity(
    aws_url: str, group: Group
) -> None:
    """Three instances while the group's desired capacity already says two
    (a termination still to come): asked for one, two must go."""
    act = _actuator(aws_url, group, instance_protection=True)
    await act.set_desired(3)
    await act.capacity()  # protects all three
    group.asg.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=2)
    assert len(group.instance_ids()) == 3  # protected: nothing could go yet
    ids = sorted(group.instance_ids())
    _busy_except(act, ids, {ids[0], ids[2]})
    assert await act.set_desired(1) == 1
    assert group.instance_ids() == {ids[1]}


def _throttle_first(client: Any, operation: str, times: int, code: str = "Throttling") -> list[str]:
    """Answer the first ``times`` attempts of ``operation`` with an AWS
    throttling error; later attempts reach the endpoint."""
    return answer(client, f"auto-scaling.{operation}", [(400, error_body(code))] * times)


@pytest.mark.aws
async def test_throttling_is_retried_then_applied(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group)
    seen_set = _throttle_first(act.client, "SetDesiredCapacity", 3)
    seen_describe = _throttle_first(
        act.client, "DescribeAutoScalingGroups", 2, "RequestLimitExceeded"
    )
    assert await act.set_desired(2) == 2
    assert len(seen_describe) == 3 and len(seen_set) == 4
    assert act.retries == 5
    assert len(group.running_in_ec2()) == 2


@pytest.mark.aws
async def test_throttling_past_the_bound_is_unavailable(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group, max_attempts=3)
    seen = _throttle_first(act.client, "SetDesiredCapacity", 100)
    with pytest.raises(Unavailable, match=r"Throttling.*gave up after 3 attempts"):
        await act.set_desired(1)
    assert len(seen) == 3
    assert act.retries == 2
    assert group.describe()["DesiredCapacity"] == 0


# --------------------------------------------------------------------------- unit (Stubber)


def _stubbed() -> tuple[Ec2Actuator, Stubber]:
    client = boto3.client("autoscaling", region_name=REGION)
    return Ec2Actuator("g", client=client, max_attempts=4), Stubber(client)


def _offline(max_attempts: int) -> tuple[Ec2Actuator, Any]:
    """An actuator whose client has the fleet's retry configuration and an
    endpoint where nothing listens (every answer is injected with
    :func:`tests.aws_answers.answer`)."""
    client = boto3.client(
        "autoscaling",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",  # nothing listens on the discard port
        config=aws.client_config(max_attempts=max_attempts),
    )
    return Ec2Actuator("g", client=client, max_attempts=max_attempts), client


_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
_GROUP_XML = f"""<DescribeAutoScalingGroupsResponse xmlns="{_NS}">
<DescribeAutoScalingGroupsResult><AutoScalingGroups><member>
<AutoScalingGroupName>g</AutoScalingGroupName>
<MinSize>0</MinSize><MaxSize>5</MaxSize><DesiredCapacity>2</DesiredCapacity>
<Instances>
<member><InstanceId>i-1</InstanceId><LifecycleState>InService</LifecycleState>
<HealthStatus>Healthy</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>
</Instances>
</member></AutoScalingGroups></DescribeAutoScalingGroupsResult>
<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>
</DescribeAutoScalingGroupsResponse>""".encode()
_SET_XML = f"""<SetDesiredCapacityResponse xmlns="{_NS}">
<ResponseMetadata><RequestId>r-2</RequestId></ResponseMetadata>
</SetDesiredCapacityResponse>""".encode()


_GROUP = {
    "AutoScalingGroups": [
        {
            "AutoScalingGroupName": "g",
            "MinSize": 0,
            "MaxSize": 5,
            "DesiredCapacity": 2,
            "DefaultCooldown": 300,
            "AvailabilityZones": ["us-east-1a"],
            "HealthCheckType": "EC2",
            "CreatedTime": "2024-01-01T00:00:00Z",
            "Instances": [
                {
                    "InstanceId": "i-1",
                    "AvailabilityZone": "us-east-1a",
                    "LifecycleState": "InService",
                    "HealthStatus": "Healthy",
                    "ProtectedFromScaleIn": False,
                },
                {
                    "InstanceId": "i-2",
                    "AvailabilityZone": "us-east-1a",
                    "LifecycleState": "Pending",
                    "HealthStatus": "Healthy",
                    "ProtectedFromScaleIn": False,
                },
                {
                    "InstanceId": "i-3",
                    "AvailabilityZone": "us-east-1a",
                    "LifecycleState": "Terminating",
                    "HealthStatus": "Healthy",
                    "ProtectedFromScaleIn": False,
                },
            ],
        }
    ]
}


@pytest.mark.unit
async def test_capacity_counts_in_service_and_pending() -> None:
    act, stub = _stubbed()
    stub.add_response("describe_auto_scaling_groups", _GROUP, {"AutoScalingGroupNames": ["g"]})
    stub.add_response("describe_warm_pool", {}, {"AutoScalingGroupName": "g"})
    stub.add_response("describe_auto_scaling_groups", _GROUP, {"AutoScalingGroupNames": ["g"]})
    with stub:
        assert await act.capacity() == (1, 1, 2, None)
        assert await act.capacity() == (1, 1, 2, None)  # no pool: not asked again
    stub.assert_no_pending_responses()


@pytest.mark.unit
async def test_capacity_counts_the_warm_pools_ready_instances() -> None:
    act, stub = _stubbed()
    pool = {
        "WarmPoolConfiguration": {"MinSize": 3, "PoolState": "Stopped", "Status": "Active"},
        "Instances": [
            {
                "InstanceId": f"i-w{n}",
                "LifecycleState": state,
                "AvailabilityZone": "us-east-1a",
                "HealthStatus": "Healthy",
                "LaunchTemplate": {"LaunchTemplateId": "lt-1"},
                "ProtectedFromScaleIn": False,
            }
            for n, state in enumerate(
                ["Warmed:Stopped", "Warmed:Running", "Warmed:Pending", "Warmed:Terminating"]
            )
        ],
    }
    stub.add_response("describe_auto_scaling_groups", _GROUP, {"AutoScalingGroupNames": ["g"]})
    stub.add_response("describe_warm_pool", pool, {"AutoScalingGroupName": "g"})
    with stub:
        assert await act.capacity() == (1, 1, 2, 2)  # the pending and leaving ones are not ready


@pytest.mark.unit
async def test_a_role_that_cannot_read_the_warm_pool_still_scales() -> None:
    act, stub = _stubbed()
    stub.add_response("describe_auto_scaling_groups", _GROUP, {"AutoScalingGroupNames": ["g"]})
    stub.add_client_error("describe_warm_pool", "AccessDenied", "not allowed", 403)
    stub.add_response("describe_auto_scaling_groups", _GROUP, {"AutoScalingGroupNames": ["g"]})
    with stub, capture_logs() as logs:
        assert await act.capacity() == (1, 1, 2, None)
        assert await act.capacity() == (1, 1, 2, None)
    assert [e["event"] for e in logs] == ["warm pool unreadable"]


@pytest.mark.unit
def test_its_client_retries_with_botocore_as_configured() -> None:
    act = Ec2Actuator.from_config(
        Ec2ActuatorConfig(kind="ec2", group_name="g", max_attempts=3, retry_mode="adaptive")
    )
    config: Any = act.client.meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 3}
    default: Any = Ec2Actuator("g").client.meta.config
    assert default.retries == {
        "mode": "standard",
        "total_max_attempts": aws.DEFAULT_MAX_ATTEMPTS,
    }


@pytest.mark.unit
def test_backoff_fields_are_still_accepted() -> None:
    cfg = Ec2ActuatorConfig(kind="ec2", group_name="g", backoff_base_s=1.0, backoff_max_s=9.0)
    assert cfg.retry_mode == "standard" and cfg.max_attempts == aws.DEFAULT_MAX_ATTEMPTS


@pytest.mark.unit
async def test_throttling_is_retried_by_botocore_with_bounded_backoff(sleeps: list[float]) -> None:
    act, client = _offline(max_attempts=4)
    seen_describe = answer(
        client,
        "auto-scaling.DescribeAutoScalingGroups",
        [(400, error_body("Throttling"))] * 3 + [(200, _GROUP_XML)],
    )
    seen_set = answer(client, "auto-scaling.SetDesiredCapacity", [(200, _SET_XML)])
    assert await act.set_desired(4) == 4
    assert len(seen_describe) == 4 and len(seen_set) == 1
    assert "DesiredCapacity=4" in seen_set[0] and "HonorCooldown=false" in seen_set[0]
    assert act.retries == 3
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(20.0, 2**attempt)  # full jitter, 1 s base for throttling


@pytest.mark.unit
async def test_throttling_past_max_attempts_is_unavailable(sleeps: list[float]) -> None:
    act, client = _offline(max_attempts=3)
    seen = answer(
        client, "auto-scaling.DescribeAutoScalingGroups", [(400, error_body("Throttling"))] * 3
    )
    with pytest.raises(Unavailable, match=r"Throttling.*gave up after 3 attempts"):
        await act.capacity()
    assert len(seen) == 3 and act.retries == 2 and len(sleeps) == 2


@pytest.mark.unit
async def test_a_busy_group_is_unavailable_not_retried(sleeps: list[float]) -> None:
    act, client = _offline(max_attempts=3)
    seen = answer(
        client,
        "auto-scaling.DescribeAutoScalingGroups",
        [(400, error_body("ResourceContention", "busy"))],
    )
    with pytest.raises(Unavailable, match="ResourceContention"):
        await act.capacity()
    assert len(seen) == 1 and sleeps == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("code", "error", "match"),
    [
        pytest.param("ValidationError", ConfigError, "SetDesiredCapacity refused", id="validation"),
        pytest.param("AccessDenied", ConfigError, "autoscaling:SetDesiredCapacity", id="access"),
        pytest.param("ExpiredToken", ConfigError, "not allowed", id="credentials"),
        pytest.param("SomethingElse", Internal, "SomethingElse", id="other"),
    ],
)
async def test_aws_errors_map_to_fleet_errors(
    code: str, error: type[Exception], match: str
) -> None:
    act, stub = _stubbed()
    stub.add_response("describe_auto_scaling_groups", _GROUP)
    stub.add_client_error("set_desired_capacity", code, "no", 400)
    with stub, pytest.raises(error, match=match):
        await act.set_desired(3)
    stub.assert_no_pending_responses()
    assert act.retries == 0


@pytest.mark.unit
async def test_unreachable_endpoint_is_unavailable(sleeps: list[float]) -> None:
    act, _ = _offline(max_attempts=2)
    with pytest.raises(Unavailable, match=r"endpoint unreachable.*gave up after 2 attempts"):
        await act.capacity()
    assert act.retries == 1 and len(sleeps) == 1


@pytest.mark.aws
async def test_the_warm_pool_follows_the_fleet_through_the_loop(aws_url: str, group: Group) -> None:
    """``warm_pool = "auto"``: each poll keeps the default policy's next
    scale-out step ready, and the pool's own settings stay as Terraform set them."""
    from autoscaler.loop import Autoscaler
    from autoscaler.policy import DefaultPolicy, PolicyConfig
    from tests.autoscaler.test_loop import ScriptedSignals

    group.asg.update_auto_scaling_group(AutoScalingGroupName=group.name, MaxSize=20)
    group.asg.put_warm_pool(
        AutoScalingGroupName=group.name,
        MinSize=1,
        MaxGroupPreparedCapacity=16,
        PoolState="Stopped",
    )
    act = _actuator(aws_url, group, warm_pool="auto")
    policy = DefaultPolicy(PolicyConfig(max_capacity=20, scale_out_cooldown_s=0))
    # 2, then 4 instances' worth of traffic at 50 req/s each (target load 0.9)
    signals = ScriptedSignals([(1000.0, 90.0), (1005.0, 180.0)])
    scaler = Autoscaler(policy=policy, actuator=act, signals=signals, poll_interval_s=5.0)  # type: ignore[arg-type]

    def pool() -> dict[str, Any]:
        return dict(
            group.asg.describe_warm_pool(AutoScalingGroupName=group.name)["WarmPoolConfiguration"]
        )

    async with scaler:
        first = await scaler.run_once()
        assert first.desired == 2
        assert pool()["MinSize"] == 2  # a doubling of the load: 2 more
        second = await scaler.run_once()
        assert second.desired == 4
        assert pool()["MinSize"] == 4
    assert pool()["MaxGroupPreparedCapacity"] == 16 and pool()["PoolState"] == "Stopped"
    assert scaler.metrics.warm_pool_size._value.get() == 4


@pytest.mark.aws
async def test_a_fixed_warm_pool_size_is_set_once(aws_url: str, group: Group) -> None:
    act = _actuator(aws_url, group, warm_pool=3)
    assert act.sizes_warm_pool
    assert await act.size_warm_pool(7) == 3  # the configured size wins over a suggestion
    assert await act.size_warm_pool(None) is None  # already 3: nothing sent
    got = group.asg.describe_warm_pool(AutoScalingGroupName=group.name)["WarmPoolConfiguration"]
    assert (got["MinSize"], got["PoolState"]) == (3, "Stopped")  # made, stopped
    assert (await act.capacity()).warm == 0  # moto prepares no instances


@pytest.mark.unit
def test_warm_pool_setting_is_checked() -> None:
    assert Ec2ActuatorConfig(kind="ec2", group_name="g", warm_pool="auto").warm_pool == "auto"
    assert Ec2ActuatorConfig(kind="ec2", group_name="g", warm_pool=2).warm_pool == 2
    for bad in (-1, "some"):
        with pytest.raises(ValueError, match="warm_pool"):
            Ec2ActuatorConfig(kind="ec2", group_name="g", warm_pool=bad)  # type: ignore[arg-type]


@pytest.mark.aws
async def test_auto_never_shrinks_the_pool_below_its_size_at_start(
    aws_url: str, group: Group
) -> None:
    group.asg.put_warm_pool(AutoScalingGroupName=group.name, MinSize=5)
    act = _actuator(aws_url, group, warm_pool="auto")
    assert await act.size_warm_pool(2) is None  # 5 already: not shrunk, nothing sent
    assert await act.size_warm_pool(7) == 7
    assert await act.size_warm_pool(1) == 5
    got = group.asg.describe_warm_pool(AutoScalingGroupName=group.name)["WarmPoolConfiguration"]
    assert got["MinSize"] == 5


@pytest.mark.aws
async def test_a_prepared_capacity_cap_below_the_new_size_is_raised(
    aws_url: str, group: Group
) -> None:
    """Terraform sets the cap to the pool's size (so the pool holds exactly
    that many); a larger pool raises it with the minimum."""
    group.asg.put_warm_pool(AutoScalingGroupName=group.name, MinSize=1, MaxGroupPreparedCapacity=1)
    act = _actuator(aws_url, group, warm_pool="auto")
    assert await act.size_warm_pool(3) == 3
    got = group.asg.describe_warm_pool(AutoScalingGroupName=group.name)["WarmPoolConfiguration"]
    assert (got["MinSize"], got["MaxGroupPreparedCapacity"]) == (3, 3)
