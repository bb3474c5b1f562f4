"""``terraform apply`` of deploy/terraform against moto's AWS server, the ``ec2``
actuator driving the worker group it made, then ``terraform destroy``.

The configuration is applied from a copy with one test-only file added, a
provider override that points every AWS service at ``FLEET_TEST_AWS_URL``. The
worker AMI's SSM parameter is seeded (AWS's public ``/aws/service/...`` names
are reserved). Every name carries a prefix unique to the run, in a region the
other tiers do not use, so runs on a shared moto server never meet.

Needs terraform >= 1.9 and the hashicorp/aws provider in a local plugin
directory (as scripts/deploy-checks.sh finds them); under ``CI=true`` their
absence fails the tier.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from autoscaler.actuators.ec2 import Ec2Actuator
from tests.conftest import missing

pytestmark = [pytest.mark.apply, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
REGION = "eu-west-3"
SERVICES = (
    "autoscaling cloudwatch ec2 ecr elbv2 iam kafka kms logs mq s3 secretsmanager ssm sts".split()
)
PLUGIN_DIRS = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)


def _terraform() -> str | None:
    """A terraform >= 1.9: the one on PATH, else the virtual environment's."""
    for candidate in (shutil.which("terraform"), str(ROOT / ".venv" / "bin" / "terraform")):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        out = subprocess.run(
            [candidate, "version"], capture_output=True, text=True, check=False, timeout=60
        ).stdout
        found = re.search(r"Terraform v(\d+)\.(\d+)", out)
        if found and (int(found[1]), int(found[2])) >= (1, 9):
            return candidate
    return None


def _plugin_dir() -> Path | None:
    dirs = [os.environ.get("TF_PLUGIN_DIR", ""), *PLUGIN_DIRS]
    for raw in filter(None, dirs):
        base = Path(raw).expanduser()
        if any((base / "registry.terraform.io" / "hashicorp" / "aws").glob("*/linux_amd64/*")):
            return base
    return None


def _override(aws_url: str) -> str:
    endpoints = "\n".join(f'    {s} = "{aws_url}"' for s in SERVICES)
    return f"""# Test only: every AWS service at the local emulator.
provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""


@dataclass
class Applied:
    name: str
    outputs: dict[str, Any]
    apply_s: float
    workdir: Path
    variables: list[str]
    run: Any  # (*args) -> CompletedProcess

    def client(self, service: str) -> Any:
        return _client(service)

    def destroy(self) -> None:
        """``terraform destroy``; the state is empty after it."""
        self.run("destroy", "-auto-approve", "-refresh=false", *self.variables)
        assert self.run("state", "list").stdout.strip() == ""

    def value(self, expression: str) -> Any:
        """``expression`` evaluated by ``terraform console`` on the applied state."""
        proc = self.run("console", *self.variables, stdin=f"jsonencode({expression})\n")
        return json.loads(json.loads(proc.stdout.strip()))


class Outputs(dict[str, Any]):
    """``terraform output``; an output a targeted apply left out (it writes
    only the outputs that name a target) is evaluated from its expression
    in outputs.tf by ``terraform console`` when asked for."""

    def __init__(self, found: dict[str, Any], applied: Applied) -> None:
        super().__init__(found)
        self._applied = applied

    def __missing__(self, name: str) -> Any:
        from tests.deploy.test_terraform import config

        expression = config()["output"][name]["value"]
        if expression.startswith("${") and expression.endswith("}"):
            expression = expression[2:-1]
        self[name] = value = self._applied.value(expression)
        return value


_URL_ENV = "FLEET_TEST_AWS_URL"


def _client(service: str) -> Any:
    """A client of moto's server with fake credentials, never a real profile's."""
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=os.environ[_URL_ENV],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _env(log: Path | None = None) -> dict[str, str]:
    """The environment terraform runs in: moto's fake credentials, and with
    ``log``, the AWS provider's debug log written there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        CHECKPOINT_DISABLE="1",
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
    )
    if log is not None:
        env.update(TF_LOG_PROVIDER="DEBUG", TF_LOG_PATH=str(log))
    return env


def _sent_again(log: Path) -> list[str]:
    """The AWS calls the provider's debug ``log`` shows it sent more than
    once (the SDK retries a call whose answer failed or did not come)."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    again = []
    for record in re.split(r"\n(?=\d{4}-\d\d-\d\dT)", text):
        attempt = re.search(r'amz_sdk_request="attempt=(\d+)', record)
        if "HTTP Request Sent" in record and attempt and int(attempt[1]) > 1:
            method = re.search(r"rpc\.method=(\w+)", record)
            again.append(f"{method[1] if method else '?'} (attempt {attempt[1]})")
    return again


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The external-broker variant, applied (destroyed at the end if the test
    did not)."""
    with _applying("external", tmp_path_factory) as applied:
        yield applied


# What the broker variants' tests look at: the broker, its security group
# rules, the instances' parameters and the roles' policies. Applied with
# -target, Terraform makes these and what they depend on (network, key,
# secrets, buckets), not the groups, load balancer and launch templates the
# external variant's test already applies in full.
BROKER_TARGETS = tuple(
    f"-target={t}"
    for t in (
        "module.worker_group.aws_ssm_parameter.worker_env",
        "module.worker_group.aws_ssm_parameter.worker_broker_url",
        "module.worker_group.aws_ssm_parameter.worker_broker_password",
        "module.autoscaler.aws_ssm_parameter.autoscaler_env",
        "module.autoscaler.aws_ssm_parameter.autoscaler_broker_password",
        "module.autoscaler.aws_ssm_parameter.autoscaler_config",
        "module.worker_group.aws_iam_role_policy.worker",
        "module.autoscaler.aws_iam_role_policy.autoscaler",
        "module.worker_group.aws_iam_role_policy.worker_kafka",
        "module.autoscaler.aws_iam_role_policy.autoscaler_kafka",
        "module.broker.aws_vpc_security_group_ingress_rule.broker_from_clients",
        "module.broker.aws_vpc_security_group_ingress_rule.broker_from_producers",
        "module.broker.aws_msk_scram_secret_association.this",
        "module.broker.data.aws_iam_policy_document.producer_kafka",
    )
)


@pytest.fixture(scope="module")
def applied_mq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The Amazon MQ for RabbitMQ variant, applied."""
    with _applying("rabbitmq", tmp_path_factory, targets=BROKER_TARGETS) as applied:
        yield applied


def _serves_msk() -> None:
    """Fail (or skip, outside CI) at once where the AWS server is plain moto,
    on which an MSK apply never finishes."""
    if not os.environ.get(_URL_ENV):
        return  # _applying says so
    kafka = _client("kafka")
    probe = f"arn:aws:kafka:{REGION}:123456789012:cluster/probe/{uuid.uuid4()}"
    try:
        kafka.get_bootstrap_brokers(ClusterArn=probe)
    except kafka.exceptions.NotFoundException:
        return
    except Exception as exc:  # plain moto: not implemented
        missing(
            f"the AWS server at {_URL_ENV} does not serve MSK's GetBootstrapBrokers ({exc});"
            " start it with scripts/moto.sh (scripts/moto_server.py)"
        )


@pytest.fixture(scope="module")
def applied_msk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The Amazon MSK variant (TLS and IAM access control), applied."""
    _serves_msk()
    with _applying("kafka", tmp_path_factory, targets=BROKER_TARGETS) as applied:
        yield applied


@pytest.fixture(scope="module")
def applied_msk_scram(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The Amazon MSK variant with SASL/SCRAM, applied."""
    _serves_msk()
    scram = "-var=msk_auth=scram"
    with _applying("kafka", tmp_path_factory, scram, targets=BROKER_TARGETS) as applied:
        yield applied


def _runner(terraform: str, workdir: Path, hung: list[str], timeout: float = 600) -> Any:
    """``run(*args, check=True, stdin=None)``: terraform ARGS in ``workdir``,
    within ``timeout`` seconds; a command that runs past it is killed with
    its provider plugins, fails with what terraform was still waiting on,
    and its name goes on ``hung``. A failure names the AWS calls the SDK
    sent again (each command's provider log is kept in ``workdir``)."""
    ran = itertools.count(1)

    def run(
        *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [terraform, f"-chdir={workdir}", *args, "-no-color"]
        log = workdir / f"provider-{next(ran):02d}-{args[0]}.log"
        with subprocess.Popen(
            argv,
            env=_env(log),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its provider plugins go with it
        ) as proc:
            try:
                stdout, stderr = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                hung.append(args[0])
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
                # its last lines name what it waited on ("Still destroying... [id=...]")
                said = f"{stdout[-6000:]}\nsent again: {_sent_again(log)}"
                raise AssertionError(f"terraform {args[0]}: over {timeout} s\n{said}") from None
        done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check:
            said = (stdout + stderr)[-6000:]
            assert done.returncode == 0, f"{said}\nsent again: {_sent_again(log)}"
        return done

    return run


@contextmanager
def _applying(
    variant: str,
    tmp_path_factory: pytest.TempPathFactory,
    *extra: str,
    targets: tuple[str, ...] = (),
) -> Iterator[Applied]:
    """Apply deploy/terraform with tests/variants/VARIANT.tfvars (and the
    ``extra`` -var arguments; only ``targets`` where given) under a name
    unique to the run; destroy it at the end."""
    aws_url = os.environ.get(_URL_ENV)
    if not aws_url:
        missing(f"{_URL_ENV} is not set; run scripts/moto.sh start (or scripts/test.sh)")
    terraform, plugin_dir = _terraform(), _plugin_dir()
    if terraform is None or plugin_dir is None:
        missing("terraform apply: no terraform >= 1.9 or no hashicorp/aws provider plugin here")
    assert aws_url and terraform and plugin_dir

    name = f"ap{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("terraform") / "terraform"
    shutil.copytree(TF, workdir, ignore=shutil.ignore_patterns(".terraform", "tests"))
    (workdir / "fleet_test_override.tf").write_text(_override(aws_url), encoding="utf-8")
    shutil.copy(TF / "tests" / "variants" / f"{variant}.tfvars", workdir / "test.tfvars")

    ami_parameter = f"/{name}/test/worker-ami"
    image = _client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ssm = _client("ssm")
    ssm.put_parameter(Name=ami_parameter, Value=image, Type="String")

    hung: list[str] = []  # commands that ran past their time
    run = _runner(terraform, workdir, hung)

    variables = [
        "-var-file=test.tfvars",
        f"-var=name={name}",
        f"-var=region={REGION}",
        f"-var=worker_ami_ssm_parameter={ami_parameter}",
        f"-var=autoscaler_ami_ssm_parameter={ami_parameter}",
        *extra,
    ]
    run("init", "-backend=false", "-lockfile=readonly", f"-plugin-dir={plugin_dir}")
    started = time.monotonic()
    try:
        run("apply", "-auto-approve", *variables, *targets)
        apply_s = time.monotonic() - started
        outputs = {k: v["value"] for k, v in json.loads(run("output", "-json").stdout).items()}
        applied = Applied(name, outputs, apply_s, workdir, variables, run)
        applied.outputs = Outputs(outputs, applied)
        yield applied
    finally:
        if "destroy" not in hung:  # one that hung would hang again on the same state
            run("destroy", "-auto-approve", "-refresh=false", *variables, check=False)
        ssm.delete_parameter(Name=ami_parameter)


OIP_PORT, METRICS_PORT = "8000", "8080"  # worker_oip_port, worker_http_port defaults


def _check_load_balancer(a: Applied) -> None:
    """The listener answers 404 but for /v2 and /v2/*, which go to the workers'
    OIP port, checked on /v2/health/ready."""
    out, elb = a.outputs, a.client("elbv2")
    (target_group,) = elb.describe_target_groups(TargetGroupArns=[out["target_group_arn"]])[
        "TargetGroups"
    ]
    assert target_group["HealthCheckPath"] == out["worker_health_path"] == "/v2/health/ready"
    assert str(target_group["Port"]) == OIP_PORT
    assert target_group["HealthCheckPort"] == "traffic-port"
    assert target_group["Matcher"]["HttpCode"] == "200"
    # alb_grpc off: null outputs, which `terraform output` leaves out.
    assert out.get("grpc_target_group_arn") is None and out.get("grpc_endpoint") is None
    (lb,) = elb.describe_load_balancers(LoadBalancerArns=[out["load_balancer_arn"]])[
        "LoadBalancers"
    ]
    assert lb["Scheme"] == "internal" and lb["DNSName"] == out["load_balancer_dns_name"]
    assert out["inference_url"] == f"{out['load_balancer_url']}/v2"

    (listener,) = elb.describe_listeners(LoadBalancerArn=out["load_balancer_arn"])["Listeners"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTP", 80)
    (default,) = listener["DefaultActions"]
    assert default["Type"] == "fixed-response"
    fixed = default["FixedResponseConfig"]
    assert (fixed["StatusCode"], fixed["ContentType"]) == ("404", "application/json")
    assert json.loads(fixed["MessageBody"]) == {"error": "not found"}
    rules = [
        r
        for r in elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
        if not r.get("IsDefault")
    ]
    (rule,) = rules
    (condition,) = rule["Conditions"]
    assert condition["Field"] == "path-pattern"
    patterns = condition.get("PathPatternConfig", {}).get("Values") or condition["Values"]
    assert sorted(patterns) == ["/v2", "/v2/*"]
    (action,) = rule["Actions"]
    assert (action["Type"], action["TargetGroupArn"]) == ("forward", out["target_group_arn"])


def _check_autoscaler_config(ssm: Any, rendered: str, name: str) -> None:
    """The configuration Terraform rendered is one the autoscaler loads, and
    the parameter its policy state goes to exists, holding no state yet."""
    from autoscaler.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "autoscaler.toml"
        path.write_text(rendered, encoding="utf-8")
        cfg = load_config(path)
    assert cfg.state_file is not None
    assert cfg.state_file == f"ssm:/{name}/autoscaler/policy-state"
    state = ssm.get_parameter(Name=cfg.state_file.removeprefix("ssm:"))["Parameter"]
    assert (state["Type"], state["Value"]) == ("String", "{}")


def _check_load_balancer_reaches_the_oip_port_only(
    found: list[dict[str, Any]], groups: dict[str, str]
) -> None:
    """The load balancer's group reaches the workers' OIP port, nothing else;
    the workers admit the load balancer on that port only, never the metrics port."""
    by_id = {g["GroupId"]: g for g in found}

    def ports(permissions: list[dict[str, Any]], peer: str) -> set[str]:
        out = set()
        for rule in permissions:
            if peer in {p["GroupId"] for p in rule.get("UserIdGroupPairs", [])}:
                assert rule["FromPort"] == rule["ToPort"], rule
                out.add(str(rule["FromPort"]))
        return out

    alb, worker = by_id[groups["alb"]], by_id[groups["worker"]]
    assert ports(alb["IpPermissionsEgress"], groups["worker"]) == {OIP_PORT}
    assert all(
        {p["GroupId"] for p in r.get("UserIdGroupPairs", [])} == {groups["worker"]}
        for r in alb["IpPermissionsEgress"]
    ), alb["IpPermissionsEgress"]
    assert ports(worker["IpPermissions"], groups["alb"]) == {OIP_PORT}
    # No metrics_scrape_cidrs in the variant: nothing at all reaches the metrics port.
    assert METRICS_PORT not in {str(r.get("FromPort")) for r in worker["IpPermissions"]}


def _check_resources(a: Applied) -> None:
    """What apply made is there, and wired as the outputs say."""
    out = a.outputs
    asg = a.client("autoscaling")
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[out["worker_group_name"]])[
        "AutoScalingGroups"
    ]
    assert group["HealthCheckType"] == "ELB"
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 8, 1)
    assert group["TargetGroupARNs"] == [out["target_group_arn"]]
    assert len(group["VPCZoneIdentifier"].split(",")) == len(out["private_subnet_ids"]) >= 2
    warm = asg.describe_warm_pool(AutoScalingGroupName=out["worker_group_name"])
    assert warm["WarmPoolConfiguration"]["MinSize"] == 1
    assert warm["WarmPoolConfiguration"]["MaxGroupPreparedCapacity"] == 1

    _check_load_balancer(a)

    groups = {k: v for k, v in out["security_group_ids"].items() if v is not None}
    assert set(groups) == {"alb", "worker", "autoscaler"}  # external broker: none of its own
    found = a.client("ec2").describe_security_groups(GroupIds=sorted(groups.values()))
    assert {g["VpcId"] for g in found["SecurityGroups"]} == {out["vpc_id"]}
    # a create the AWS server made twice (a retry) leaves one Terraform does not
    # know of; a second route table would keep the VPC from being deleted
    tables = a.client("ec2").describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [out["vpc_id"]]}]
    )["RouteTables"]
    names = sorted(t["Value"] for r in tables for t in r.get("Tags", []) if t["Key"] == "Name")
    assert len(names) == len(set(names)), f"route tables made twice: {names}"
    _check_load_balancer_reaches_the_oip_port_only(found["SecurityGroups"], groups)

    ssm = a.client("ssm")
    env = _parameters(ssm, out["worker_parameter_path"])
    assert env["FLEET_MODELS"] == out["models_uri"] == f"s3://{out['models_bucket']}/models"
    assert (env["FLEET_OIP_HOST"], env["FLEET_OIP_PORT"]) == ("0.0.0.0", OIP_PORT)
    assert "FLEET_OIP_GRPC_PORT" not in env  # alb_grpc off
    assert env["FLEET_BROKER_URL"].startswith("amqps://fleet:")
    assert "FLEET_METRICS_NAMESPACE" not in env
    config = ssm.get_parameter(Name=out["autoscaler_config_parameter"], WithDecryption=True)
    assert f'group_name = "{out["worker_group_name"]}"' in config["Parameter"]["Value"]
    _check_autoscaler_config(ssm, config["Parameter"]["Value"], a.name)

    a.client("s3").head_bucket(Bucket=out["models_bucket"])
    repos = a.client("ecr").describe_repositories(
        repositoryNames=[f"{a.name}/worker", f"{a.name}/cpu"]
    )
    urls = {r["repositoryName"].split("/")[-1]: r["repositoryUri"] for r in repos["repositories"]}
    assert urls == out["ecr_repository_urls"]
    a.client("cloudwatch").get_dashboard(DashboardName=out["dashboard_name"])
    _check_policies(a, repos["repositories"])


def _check_policies(a: Applied, repos: list[dict[str, Any]]) -> None:
    """Each role may pull its images (the created repositories and the ones the
    images name); only the autoscaler puts metrics, into its namespace only."""
    statements = {role: _role_statements(a, role) for role in ("worker", "autoscaler")}
    image_repo = "arn:aws:ecr:us-east-1:123456789012:repository/fleet/worker"  # external.tfvars
    for role, by_sid in statements.items():
        pulls = by_sid["PullImages"]["Resource"]
        assert {r["repositoryArn"] for r in repos} | {image_repo} <= set(pulls), role
    assert "PutMetricsInOwnNamespace" not in statements["worker"]
    metrics = statements["autoscaler"]["PutMetricsInOwnNamespace"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Fleet"}}


async def _check_jobs(a: Applied) -> None:
    """The jobs bucket is private, expires what it holds, and works as the
    workers' result store with the permissions the workers get."""
    from fleet.errors import ConfigError
    from fleet.jobs import JobState, new_job_id
    from fleet.jobs.s3_store import S3ResultStore

    out, s3 = a.outputs, a.client("s3")
    bucket = out["jobs_bucket"]
    env = _parameters(a.client("ssm"), out["worker_parameter_path"])
    assert env["FLEET_RESULTS"] == out["jobs_results_url"] == f"s3://{bucket}/results"
    assert env["FLEET_PAYLOADS"] == out["jobs_payloads_url"] == f"s3://{bucket}/payloads"
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Expiration"]["Days"] == 2
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    role_name = out["worker_role_arn"].rsplit("/", 1)[-1]
    document = a.client("iam").get_role_policy(RoleName=role_name, PolicyName="jobs")
    policy = document["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    assert {st["Sid"] for st in policy["Statement"]} == {
        "ListJobsBucket",
        "ReadWriteJobs",
        "JobObjectsKey",
    }
    assert json.loads(out["jobs_client_policy_json"]) == policy
    async with S3ResultStore(out["jobs_results_url"], client=s3) as store:
        job = new_job_id()
        with pytest.raises(ConfigError, match="403"):  # the bucket refuses plain HTTP
            await store.create(job, model="digits")
        # moto serves no TLS: lift the policy to check the store against the applied bucket
        s3.delete_bucket_policy(Bucket=bucket)
        await store.create(job, model="digits")
        assert await store.start(job) and await store.finish(job, ok=True, result=b"frame")
        record = await store.get(job)
        assert record is not None and (record.state, record.result) == (JobState.DONE, b"frame")


def _parameters(ssm: Any, path: str) -> dict[str, str]:
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path=path, Recursive=True, WithDecryption=True
    )
    return {p["Name"].rsplit("/", 1)[-1]: p["Value"] for page in pages for p in page["Parameters"]}


async def _drive_the_group(a: Applied) -> None:
    """The autoscaler's actuator scales the group Terraform made, out and in."""
    group_name = a.outputs["worker_group_name"]
    act = Ec2Actuator(group_name, region=REGION, endpoint_url=os.environ[_URL_ENV])
    try:
        await act.start()
        assert await act.set_desired(3, ("test: scale-out",)) == 3
        in_service, pending, desired, _warm = await act.capacity()
        assert (in_service + pending, desired) == (3, 3)
        assert await act.set_desired(0, ("test: scale-in",)) == 0
        in_service, pending, desired, _warm = await act.capacity()
        assert (in_service + pending, desired) == (0, 0)
        # The group's bounds hold whatever is asked.
        assert await act.set_desired(50) == 8
        assert await act.set_desired(0) == 0
    finally:
        await act.close()


def _nothing_left(a: Applied) -> None:
    out, name = a.outputs, a.name
    assert a.run("state", "list").stdout.strip() == ""
    asg = a.client("autoscaling")
    groups = asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=[out["worker_group_name"], out["autoscaler_group_name"]]
    )["AutoScalingGroups"]
    assert groups == []
    templates = a.client("ec2").describe_launch_templates()["LaunchTemplates"]
    assert not [t for t in templates if t["LaunchTemplateName"].startswith(f"{name}-")]
    vpcs = a.client("ec2").describe_vpcs()["Vpcs"]
    assert out["vpc_id"] not in {v["VpcId"] for v in vpcs}
    assert _parameters(a.client("ssm"), f"/{name}/worker") == {}
    assert _parameters(a.client("ssm"), f"/{name}/autoscaler") == {}
    buckets = {b["Name"] for b in a.client("s3").list_buckets()["Buckets"]}
    assert out["models_bucket"] not in buckets and out["jobs_bucket"] not in buckets
    repos = a.client("ecr").describe_repositories()["repositories"]
    assert not [r for r in repos if r["repositoryName"].startswith(f"{name}/")]
    lbs = a.client("elbv2").describe_load_balancers()["LoadBalancers"]
    assert out["load_balancer_arn"] not in {lb["LoadBalancerArn"] for lb in lbs}
    roles = a.client("iam").list_roles()["Roles"]
    assert not [r for r in roles if r["RoleName"].startswith(f"{name}-")]
    logs = a.client("logs").describe_log_groups(logGroupNamePrefix=f"/{name}/")["logGroups"]
    assert logs == []
    key = a.client("kms").describe_key(KeyId=out["kms_key_arn"])["KeyMetadata"]
    assert key["KeyState"] == "PendingDeletion"  # KMS keys are only ever scheduled


def test_a_hung_terraform_fails_with_what_it_waited_on_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, pid_file = tmp_path / "terraform", tmp_path / "plugin.pid"
    fake.write_text(
        "#!/bin/bash\n"
        "echo 'aws_vpc.this: Still destroying... [id=vpc-1, 10s elapsed]'\n"
        f"sleep 600 & echo $! > {pid_file}.new && mv {pid_file}.new {pid_file}\n"
        "wait\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    communicate = subprocess.Popen.communicate

    def past_its_time(proc: Any, stdin: Any = None, timeout: float | None = None) -> Any:
        """The runner's bounded wait runs out once the fake has said its line
        and started its child, however slow the host: no clock decides it."""
        if timeout is None:
            return communicate(proc, stdin)
        _wait_for(pid_file)
        raise subprocess.TimeoutExpired(proc.args, timeout)

    monkeypatch.setattr(subprocess.Popen, "communicate", past_its_time)
    hung: list[str] = []
    run = _runner(str(fake), tmp_path, hung, timeout=600)
    with pytest.raises(AssertionError, match=r"(?s)over 600 s.*aws_vpc.this: Still destroying"):
        run("destroy", "-auto-approve")
    assert hung == ["destroy"]
    plugin = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(plugin) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(plugin), "the command's own children outlived it"


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended, only not yet been reaped


async def test_apply_scale_and_destroy(applied: Applied) -> None:
    _check_resources(applied)
    await _check_jobs(applied)
    await _drive_the_group(applied)
    started = time.monotonic()
    applied.destroy()
    destroy_s = time.monotonic() - started
    _nothing_left(applied)
    print(f"terraform apply {applied.apply_s:.0f} s, destroy {destroy_s:.0f} s")


def test_the_amazon_mq_variant_applies_wired_and_destroys(applied_mq: Applied) -> None:
    """Amazon MQ for RabbitMQ: a private broker reached over AMQPS, its
    management API over HTTPS on the console URL, the fleet's application user
    named in the URL with its password only in a file parameter, the
    administrator's secret read by no instance; destroy removes it all."""
    a, out = applied_mq, applied_mq.outputs
    mq = a.client("mq")
    (summary,) = [
        b for b in mq.list_brokers()["BrokerSummaries"] if b["BrokerName"] == f"{a.name}-rabbitmq"
    ]
    broker = mq.describe_broker(BrokerId=summary["BrokerId"])
    assert broker["EngineType"].lower() == "rabbitmq"
    assert broker["PubliclyAccessible"] is False
    assert broker["SecurityGroups"] == [out["broker_security_group_id"]]
    assert set(broker["SubnetIds"]) <= set(out["private_subnet_ids"])
    assert {u["Username"] for u in broker["Users"]} == {out["broker_admin_username"]}
    assert out["broker_admin_username"] != out["broker_username"]

    url = out["broker_client_url"]
    parts = urlsplit(url)
    endpoint = urlsplit(broker["BrokerInstances"][0]["Endpoints"][0])
    assert (parts.scheme, parts.username, parts.password) == ("amqps", out["broker_username"], None)
    assert (parts.hostname, parts.port) == (endpoint.hostname, 5671)
    assert parse_qs(parts.query)["management_url"] == [out["broker_management_url"]]
    assert out["broker_management_url"].startswith("https://")

    ssm, secrets = a.client("ssm"), a.client("secretsmanager")
    password = secrets.get_secret_value(SecretId=out["broker_password_secret_arn"])["SecretString"]
    admin = secrets.get_secret_value(SecretId=out["broker_admin_secret_arn"])["SecretString"]
    assert len(password) >= 24 and password != admin
    for role in ("worker", "autoscaler"):
        assert _parameters(ssm, f"/{a.name}/{role}/files") == {
            "FLEET_BROKER_PASSWORD_FILE": password
        }
    env = _parameters(ssm, out["worker_parameter_path"])
    assert env["FLEET_BROKER_URL"] == url and password not in json.dumps(env)
    config = ssm.get_parameter(Name=out["autoscaler_config_parameter"], WithDecryption=True)
    assert f"broker = {json.dumps(url)}" in config["Parameter"]["Value"]
    _check_broker_ports(a, (5671, 443))
    _check_no_role_reads(a, out["broker_admin_secret_arn"])

    a.destroy()
    names = {b["BrokerName"] for b in mq.list_brokers()["BrokerSummaries"]}
    assert f"{a.name}-rabbitmq" not in names


def _check_broker_ports(a: Applied, ports: tuple[int, ...]) -> None:
    """The broker admits ``ports`` (Amazon MQ: AMQPS and HTTPS) from the
    workers, the autoscaler and the producers' CIDR blocks (the variants'
    broker_client_cidrs), nothing else."""
    out = a.outputs
    (group,) = a.client("ec2").describe_security_groups(GroupIds=[out["broker_security_group_id"]])[
        "SecurityGroups"
    ]
    sources: dict[int, set[str]] = {}
    for rule in group["IpPermissions"]:
        assert rule["FromPort"] == rule["ToPort"], rule
        found = sources.setdefault(rule["FromPort"], set())
        found |= {r["CidrIp"] for r in rule.get("IpRanges", [])}
        found |= {p["GroupId"] for p in rule.get("UserIdGroupPairs", [])}
    clients = {out["worker_security_group_id"], out["autoscaler_security_group_id"], "10.99.0.0/16"}
    assert sources == dict.fromkeys(ports, clients)


def _check_no_role_reads(a: Applied, secret_arn: str) -> None:
    """No instance role's policy names ``secret_arn``."""
    iam = a.client("iam")
    for role in ("worker", "autoscaler"):
        role_name = a.outputs[f"{role}_role_arn"].rsplit("/", 1)[-1]
        for policy in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role_name, PolicyName=policy)
            assert secret_arn not in json.dumps(document["PolicyDocument"]), (role, policy)


# ---------------------------------------------------------------------- Amazon MSK
def _msk_cluster(a: Applied) -> dict[str, Any]:
    kafka = a.client("kafka")
    (summary,) = [
        c
        for c in kafka.list_clusters(ClusterNameFilter=f"{a.name}-kafka")["ClusterInfoList"]
        if c["ClusterName"] == f"{a.name}-kafka"
    ]
    info: dict[str, Any] = kafka.describe_cluster(ClusterArn=summary["ClusterArn"])["ClusterInfo"]
    return info


def _msk_transport(a: Applied, cluster: dict[str, Any], files: dict[str, str], tmp: Path) -> Any:
    """The Kafka transport the workers build from what apply gave them (their
    environment, their files), not connected: the brokers are not real."""
    from fleet.transport import connect

    env = _parameters(a.client("ssm"), a.outputs["worker_parameter_path"])
    url = env["FLEET_BROKER_URL"]
    assert url == a.outputs["broker_client_url"]
    for name, value in files.items():
        (tmp / name).write_text(value, encoding="utf-8")
        os.environ[name] = str(tmp / name)
    try:
        transport = connect(url)
    finally:
        for name in files:
            del os.environ[name]
    brokers = a.client("kafka").get_bootstrap_brokers(ClusterArn=cluster["ClusterArn"])
    return transport, brokers


def _check_msk_cluster(a: Applied, cluster: dict[str, Any], port: int) -> None:
    """Private, encrypted at rest with the fleet key and in transit, logs to
    its group, reachable on ``port`` from the fleet's roles and the producers'
    CIDR blocks only."""
    out = a.outputs
    assert cluster["State"] == "ACTIVE"
    nodes = cluster["BrokerNodeGroupInfo"]
    assert nodes["SecurityGroups"] == [out["broker_security_group_id"]]
    assert set(nodes["ClientSubnets"]) == set(out["private_subnet_ids"])
    encryption = cluster["EncryptionInfo"]
    assert encryption["EncryptionAtRest"]["DataVolumeKMSKeyId"] == out["kms_key_arn"]
    assert encryption["EncryptionInTransit"] == {"ClientBroker": "TLS", "InCluster": True}
    logs = cluster["LoggingInfo"]["BrokerLogs"]["CloudWatchLogs"]
    assert logs == {"Enabled": True, "LogGroup": f"/{a.name}/msk"}
    _check_broker_ports(a, (port,))


def _role_statements(a: Applied, role: str) -> dict[str, dict[str, Any]]:
    iam = a.client("iam")
    role_name = a.outputs[f"{role}_role_arn"].rsplit("/", 1)[-1]
    found: dict[str, dict[str, Any]] = {}
    for policy in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=policy)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        found.update({st["Sid"]: st for st in document["Statement"] if "Sid" in st})
    return found


def test_the_msk_variant_applies_wired_and_destroys(applied_msk: Applied, tmp_path: Path) -> None:
    """Amazon MSK with TLS and IAM access control: the workers are given a
    ``kafka+sasl+ssl://`` URL naming the cluster's IAM brokers (9098), which
    the Kafka transport reads as SASL_SSL with AWS_MSK_IAM in the fleet's
    region; no password anywhere; the roles may connect to this cluster and
    touch the fleet's topics and groups by name only; destroy removes it."""
    a, out = applied_msk, applied_msk.outputs
    cluster = _msk_cluster(a)
    _check_msk_cluster(a, cluster, 9098)
    auth = cluster["ClientAuthentication"]
    assert auth["Sasl"]["Iam"]["Enabled"] is True
    assert auth["Unauthenticated"]["Enabled"] is False
    assert not auth["Sasl"].get("Scram", {}).get("Enabled")

    transport, brokers = _msk_transport(a, cluster, {}, tmp_path)
    hosts = brokers["BootstrapBrokerStringSaslIam"].split(",")
    assert transport.bootstrap == hosts and all(h.endswith(":9098") for h in hosts)
    security = transport.security
    assert (security.protocol, security.mechanism) == ("SASL_SSL", "AWS_MSK_IAM")
    assert (security.aws_region, security.username, security.password) == (REGION, None, None)
    assert out["broker_endpoint"] == brokers["BootstrapBrokerStringSaslIam"]
    assert _parameters(a.client("ssm"), f"/{a.name}/worker/files") == {}
    assert out["broker_password_secret_arn"] is None
    assert json.loads(out["kafka_producer_policy_json"])["Statement"]

    arn = cluster["ClusterArn"]
    topic = arn.replace(":cluster/", ":topic/") + "/"
    for role in ("worker", "autoscaler"):
        statements = _role_statements(a, role)
        connect = [s for s in statements.values() if "kafka-cluster:Connect" in s["Action"]]
        assert [s["Resource"] for s in connect] == [arn], role
        named = {
            r
            for s in statements.values()
            if any(x.startswith("kafka-cluster:") for x in _listed(s["Action"]))
            for r in _listed(s["Resource"])
        }
        assert all(
            r == arn or r.startswith((topic, arn.replace(":cluster/", ":group/"))) for r in named
        ), role
    assert f"{topic}fleet.digits.online" in {
        r for s in _role_statements(a, "worker").values() for r in _listed(s["Resource"])
    }

    a.destroy()
    with pytest.raises(a.client("kafka").exceptions.NotFoundException):
        a.client("kafka").describe_cluster(ClusterArn=arn)


def test_the_msk_scram_variant_applies_wired_and_destroys(
    applied_msk_scram: Applied, tmp_path: Path
) -> None:
    """Amazon MSK with SASL/SCRAM: the cluster takes SCRAM only, its secret
    (AmazonMSK_ name, the fleet key) is associated with it, and the workers'
    URL names the user and the SCRAM brokers (9096) while the password comes
    from the file parameter; the transport reads both; destroy removes it."""
    a, out = applied_msk_scram, applied_msk_scram.outputs
    cluster = _msk_cluster(a)
    _check_msk_cluster(a, cluster, 9096)
    auth = cluster["ClientAuthentication"]
    assert auth["Sasl"]["Scram"]["Enabled"] is True
    assert not auth["Sasl"].get("Iam", {}).get("Enabled")
    assert auth["Unauthenticated"]["Enabled"] is False

    secret_arn = out["broker_password_secret_arn"]
    secrets = a.client("secretsmanager")
    secret = secrets.describe_secret(SecretId=secret_arn)
    assert secret["Name"].startswith("AmazonMSK_") and secret["KmsKeyId"] == out["kms_key_arn"]
    stored = json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])
    assert stored["username"] == out["broker_username"] and len(stored["password"]) >= 24
    arn = cluster["ClusterArn"]
    assert a.client("kafka").list_scram_secrets(ClusterArn=arn)["SecretArnList"] == [secret_arn]

    files = _parameters(a.client("ssm"), f"/{a.name}/worker/files")
    assert files == {"FLEET_BROKER_PASSWORD_FILE": stored["password"]}
    assert stored["password"] not in out["broker_client_url"]
    transport, brokers = _msk_transport(a, cluster, files, tmp_path)
    hosts = brokers["BootstrapBrokerStringSaslScram"].split(",")
    assert transport.bootstrap == hosts and all(h.endswith(":9096") for h in hosts)
    security = transport.security
    assert (security.protocol, security.mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (security.username, security.password) == (stored["username"], stored["password"])
    _check_no_role_reads(a, secret_arn)

    a.destroy()
    with pytest.raises(a.client("kafka").exceptions.NotFoundException):
        a.client("kafka").describe_cluster(ClusterArn=arn)


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value
