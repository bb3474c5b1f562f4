"""scripts/moto_server.py's mends: the server answers one call at a time,
and a retried call whose first attempt it answered 2xx gets that answer
again without moto running it twice; CreateRouteTable and
CreateLaunchTemplate make one resource per ClientToken; a revoke of a
security group rule id no longer held is answered as EC2 answers it."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.ec2.models.security_groups import SecurityGroupBackend
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.responses.route_tables import RouteTables
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client

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
    monkeypatch.setattr(RouteTables, "create_route_table", RouteTables.create_route_table)
    monkeypatch.setattr(
        LaunchTemplates, "create_launch_template", LaunchTemplates.create_launch_template
    )
    for direction in ("ingress", "egress"):
        name = f"revoke_security_group_{direction}"
        monkeypatch.setattr(SecurityGroupBackend, name, getattr(SecurityGroupBackend, name))
    server = _server()
    server._creates_once_per_client_token()
    server._revokes_answer_ec2s_code()
    return server


def _ec2() -> Any:
    """An EC2 client, for use under ``mock_aws``."""
    return boto3.client(
        "ec2", region_name="eu-west-3", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


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


@pytest.fixture
def moto_app() -> Iterator[Any]:
    """moto's server application, in process, on backends reset after."""
    with mock_aws():
        yield DomainDispatcherApplication(create_backend_app)


def _put_parameter(app: Any, invocation: str, attempt: int) -> tuple[int, dict[str, Any]]:
    """SSM PutParameter of one new name, sent to the WSGI ``app`` as the AWS
    SDK sends attempt ``attempt`` of call ``invocation``."""
    scope = "Credential=testing/20261207/eu-west-3/ssm/aws4_request"
    answer = Client(app).post(
        "/",
        data=json.dumps({"Name": "/fleet/p", "Value": "v", "Type": "String"}),
        headers={
            "Host": "ssm.eu-west-3.amazonaws.com",
            "X-Amz-Target": "AmazonSSM.PutParameter",
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": f"AWS4-HMAC-SHA256 {scope}, SignedHeaders=host, Signature=0",
            "amz-sdk-invocation-id": invocation,
            "amz-sdk-request": f"attempt={attempt}; max=25",
        },
    )
    return answer.status_code, json.loads(answer.get_data())


def test_a_retried_call_gets_its_first_answer_and_runs_once(moto_app: Any) -> None:
    served = _server().one_call_at_a_time(moto_app)
    assert _put_parameter(served, "call-1", 1) == (200, {"Version": 1, "Tier": "Standard"})
    # its answer lost on the way: the SDK sends it again
    assert _put_parameter(served, "call-1", 2) == (200, {"Version": 1, "Tier": "Standard"})
    # a new call with the same arguments is moto's to answer, as before
    status, said = _put_parameter(served, "call-2", 1)
    assert (status, said["__type"]) == (400, "ParameterAlreadyExists")
    # moto as it comes: the retry runs again and fails on the name its first try took
    status, said = _put_parameter(moto_app, "call-1", 2)
    assert (status, said["__type"]) == (400, "ParameterAlreadyExists")


def _counted(statuses: list[str]) -> tuple[Any, list[str]]:
    """A WSGI application answering ``statuses`` in turn, and the list of
    the calls it ran."""
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["HTTP_AMZ_SDK_INVOCATION_ID"])
        start_response(statuses[len(ran) - 1], [("Content-Type", "text/plain")])
        return [f"answer {len(ran)}".encode()]

    return app, ran


def _send(app: Any, invocation: str, attempt: int) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "HTTP_AMZ_SDK_INVOCATION_ID": invocation,
        "HTTP_AMZ_SDK_REQUEST": f"attempt={attempt}; max=3",
    }
    said: list[str] = []
    body = app(environ, lambda status, headers: said.append(status))
    return said[0], b"".join(body)


def test_a_retry_of_a_call_that_failed_runs_again() -> None:
    app, ran = _counted(["500 INTERNAL SERVER ERROR", "200 OK", "200 OK"])
    served = _server().one_call_at_a_time(app)
    assert _send(served, "c", 1) == ("500 INTERNAL SERVER ERROR", b"answer 1")
    assert _send(served, "c", 2) == ("200 OK", b"answer 2")
    assert _send(served, "c", 3) == ("200 OK", b"answer 2")  # the 2xx is kept
    assert _send(served, "c", 1) == ("200 OK", b"answer 3")  # a first attempt always runs
    assert ran == ["c", "c", "c"]


def test_the_answers_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server()
    monkeypatch.setattr(server, "_KEPT_ANSWERS", 2)
    app, ran = _counted(["200 OK"] * 5)
    served = server.one_call_at_a_time(app)
    for invocation in ("a", "b", "c"):
        _send(served, invocation, 1)
    assert _send(served, "c", 2) == ("200 OK", b"answer 3")  # kept
    assert _send(served, "a", 2) == ("200 OK", b"answer 4")  # the oldest, dropped: run again
    assert ran == ["a", "b", "c", "a"]


def test_a_call_waits_for_the_one_under_way() -> None:
    inside, leave = threading.Event(), threading.Event()
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["HTTP_AMZ_SDK_INVOCATION_ID"])
        if len(ran) == 1:
            inside.set()
            assert leave.wait(10)
        start_response("200 OK", [])
        return [b""]

    served = _server().one_call_at_a_time(app)
    first = threading.Thread(target=_send, args=(served, "first", 1))
    second = threading.Thread(target=_send, args=(served, "second", 1))
    first.start()
    assert inside.wait(10)
    second.start()
    second.join(0.5)
    assert ran == ["first"]  # moto as it comes: both run at once, on their own threads
    leave.set()
    first.join(10)
    second.join(10)
    assert ran == ["first", "second"]
