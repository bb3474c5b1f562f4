"""scripts/moto_server.py's EC2 mends: a tag write never changes a tag dict
that another request is reading, CreateRouteTable and CreateLaunchTemplate
make one resource per ClientToken, however often a retry sends it, and
security group rules are written one at a time, a revoke of a rule id no
longer held answered as EC2 answers it."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.ec2.exceptions import TagLimitExceeded
from moto.ec2.models.security_groups import SecurityGroupBackend
from moto.ec2.models.tags import TagBackend
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.responses.route_tables import RouteTables

pytestmark = pytest.mark.unit

SERVER = Path(__file__).resolve().parents[2] / "scripts" / "moto_server.py"


def _server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_test_moto_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mended(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """moto's classes with the server's EC2 mends, put back as they were after."""
    for name in ("create_tags", "delete_tags", "delete_tag_keys"):
        monkeypatch.setattr(TagBackend, name, getattr(TagBackend, name))
    monkeypatch.setattr(RouteTables, "create_route_table", RouteTables.create_route_table)
    monkeypatch.setattr(
        LaunchTemplates, "create_launch_template", LaunchTemplates.create_launch_template
    )
    for direction in ("ingress", "egress"):
        for verb in ("authorize", "revoke"):
            name = f"{verb}_security_group_{direction}"
            monkeypatch.setattr(SecurityGroupBackend, name, getattr(SecurityGroupBackend, name))
    server = _server()
    server._tags_whole_and_creates_once()
    server._rule_writes_whole()
    return server


def _ec2() -> Any:
    """An EC2 client, for use under ``mock_aws``."""
    return boto3.client(
        "ec2", region_name="eu-west-3", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def test_a_read_of_tags_under_way_survives_a_write(mended: None) -> None:
    backend = TagBackend()
    backend.create_tags(["rtb-1"], {"Name": "public"})
    reading = iter(backend.tags["rtb-1"].items())  # as moto's describe_tags reads them
    assert next(reading) == ("Name", "public")
    backend.create_tags(["rtb-1"], {"Role": "nat"})
    backend.delete_tags(["rtb-1"], {"Name": None})  # type: ignore[dict-item]
    backend.delete_tag_keys(["rtb-1"], ["Missing"])
    # moto as it comes: RuntimeError, dictionary keys changed during iteration
    assert list(reading) == []
    assert backend.tags["rtb-1"] == {"Role": "nat"}


def test_a_refused_tag_write_changes_nothing(mended: None) -> None:
    backend = TagBackend()
    backend.create_tags(["rtb-1"], {f"k{i}": "v" for i in range(50)})
    with pytest.raises(TagLimitExceeded):
        backend.create_tags(["rtb-1"], {"one-too-many": "v"})
    assert len(backend.tags["rtb-1"]) == 50 and "one-too-many" not in backend.tags["rtb-1"]


def test_a_route_table_is_made_once_per_client_token(mended: None) -> None:
    with mock_aws():
        ec2 = _ec2()
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        made = [
            ec2.create_route_table(VpcId=vpc, ClientToken=token)["RouteTable"]["RouteTableId"]
            for token in ("first", "first", "second")
        ]
        assert made[0] == made[1] != made[2]
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
        assert len(tables["RouteTables"]) == 3  # the main one and the two tokens'


def test_a_launch_template_is_made_once_per_client_token(mended: None) -> None:
    with mock_aws():
        ec2 = _ec2()
        data = {"ImageId": "ami-12c6146b"}

        def create(name: str, token: str) -> str:
            made = ec2.create_launch_template(
                LaunchTemplateName=name, LaunchTemplateData=data, ClientToken=token
            )
            return str(made["LaunchTemplate"]["LaunchTemplateId"])

        first, retried = create("worker", "first"), create("worker", "first")
        assert first == retried
        names = ec2.describe_launch_templates()["LaunchTemplates"]
        assert [t["LaunchTemplateName"] for t in names] == ["worker"]
        with pytest.raises(ClientError, match="AlreadyExists"):
            create("worker", "second")  # a new token for a name in use: refused, as on EC2
        ec2.delete_launch_template(LaunchTemplateId=first)
        assert create("worker", "first") != first  # what the token made is gone: made anew


def _group() -> tuple[Any, str, dict[str, Any]]:
    """An EC2 client (under ``mock_aws``), a new VPC's security group, and a rule for it."""
    ec2 = _ec2()
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="g", Description="g", VpcId=vpc)["GroupId"]
    rule = {
        "IpProtocol": "tcp",
        "FromPort": 443,
        "ToPort": 443,
        "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
    }
    return ec2, group, rule


@pytest.mark.parametrize("direction", ["Ingress", "Egress"])
def test_a_revoke_of_a_rule_id_no_longer_held_is_answered_as_ec2_answers_it(
    mended: ModuleType, direction: str
) -> None:
    with mock_aws():
        ec2, group, rule = _group()
        authorize = getattr(ec2, f"authorize_security_group_{direction.lower()}")
        revoke = getattr(ec2, f"revoke_security_group_{direction.lower()}")
        made = authorize(GroupId=group, IpPermissions=[rule])["SecurityGroupRules"][0]
        revoke(GroupId=group, SecurityGroupRuleIds=[made["SecurityGroupRuleId"]])
        with pytest.raises(ClientError) as again:  # a retry of a revoke that went through
            revoke(GroupId=group, SecurityGroupRuleIds=[made["SecurityGroupRuleId"]])
        # moto as it comes: InvalidPermission.NotFound, which fails a terraform destroy
        assert again.value.response["Error"]["Code"] == "InvalidSecurityGroupRuleId.NotFound"
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])
        assert made["SecurityGroupRuleId"] not in [
            r["SecurityGroupRuleId"] for r in rules["SecurityGroupRules"]
        ]


def test_a_rule_write_waits_for_the_one_under_way(mended: ModuleType) -> None:
    with mock_aws():
        ec2, group, rule = _group()
        done = threading.Event()

        def authorize() -> None:
            ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[rule])
            done.set()

        with mended._RULE_WRITES:  # a revoke rebuilding this group's rules, say
            writer = threading.Thread(target=authorize)
            writer.start()
            assert not done.wait(0.5)  # moto as it comes: added while the list is rebuilt
        writer.join(10)
        assert done.is_set()
