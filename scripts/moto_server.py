"""moto's AWS server, with the Amazon MSK calls moto does not answer filled in,
and S3's conditional writes made atomic.

``scripts/moto.sh`` runs this in place of ``moto_server`` (same arguments).
moto creates an MSK cluster but leaves it ``CREATING`` for ever, and answers
neither GetBootstrapBrokers nor the SASL/SCRAM secret calls, so a
``terraform apply`` of an MSK fleet cannot finish on it. Here:

- a new provisioned cluster is ``ACTIVE`` at once (AWS takes 20-40 minutes);
- DescribeCluster(V2) of a deleted cluster is 404 ``NotFoundException``, as on AWS
  (moto fails with a ``KeyError``), so a destroy sees it gone;
- GetBootstrapBrokers answers one ``b-N.<name>.<id>.c2.kafka.<region>.amazonaws.com``
  host per broker node, on the ports AWS uses for what the cluster's
  encryption and client authentication allow: 9092 plaintext, 9094 TLS,
  9096 SASL/SCRAM, 9098 IAM;
- Batch(Dis)AssociateScramSecret and ListScramSecrets keep the secrets
  associated with a cluster.

It stands in for MSK's control plane only: no broker listens on those hosts.
What it lets a test check is the Terraform's wiring (URLs, ports, rights,
secrets), not MSK itself.

S3: moto checks a PutObject's ``If-Match`` / ``If-None-Match`` and then
writes, in two steps with nothing held between them, so two requests served
at once on its threads can both pass the same condition. S3 itself lets
exactly one win. Here a conditional PutObject holds one lock from its check
to its write.

EC2 tags: moto answers every call that shows a tagged resource by iterating
that resource's tag dict, which another thread's CreateTags changes in place.
The read then fails (``dictionary changed size during iteration``) and the
call answers 500, after a create has already stored what it made. Terraform
retries the create, moto makes a second one, and the first is left behind:
a second route table in a VPC makes DeleteVpc refuse (DependencyViolation),
which Terraform retries for 20 minutes. Terraform also retries a create
whose answer it did not read, with none logged as failed here (seen under
load), and a retried CreateLaunchTemplate then fails on the name its first
try took (``InvalidLaunchTemplateName.AlreadyExistsException``). Here a tag
write builds the resource's new dict aside and puts it in place whole, and
CreateRouteTable and CreateLaunchTemplate with a ClientToken already seen
answer what that token made, as EC2 does.

EC2 security group rules: moto revokes a rule by building the group's list
of rules anew and putting it in place, so a rule another thread adds to that
group meanwhile is lost (or one it revokes comes back). And a revoke naming
a rule id the group does not hold is ``InvalidPermission.NotFound`` on moto
where EC2 answers ``InvalidSecurityGroupRuleId.NotFound``, which Terraform
takes as "already deleted" on a destroy (a retried revoke, whose first try
went through, failed a destroy here). Here every authorize and revoke holds
one lock, and such a revoke answers EC2's code.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
import types
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from moto.kafka import models, responses
from moto.kafka.exceptions import NotFoundException
from moto.server import main

# (encryption in transit allows it, client authentication allows it) -> port
PLAINTEXT, TLS, SCRAM, IAM = 9092, 9094, 9096, 9098


class ClusterNotFound(NotFoundException):
    code = 404  # as MSK answers it (moto's NotFoundException is a 400)


def _cluster(backend: models.KafkaBackend, arn: str) -> models.FakeKafkaCluster:
    try:
        return backend.clusters[arn]
    except KeyError:
        raise ClusterNotFound(f"cluster {arn} not found") from None


def bootstrap_brokers(cluster: models.FakeKafkaCluster) -> dict[str, str]:
    """GetBootstrapBrokers' answer for ``cluster``, as AWS shapes it."""
    encryption = (cluster.encryption_info or {}).get("encryptionInTransit") or {}
    client_broker = encryption.get("clientBroker", "TLS")
    auth = cluster.client_authentication or {}
    sasl = auth.get("sasl") or {}
    unauthenticated = (auth.get("unauthenticated") or {}).get("enabled", not sasl)
    tls = client_broker in ("TLS", "TLS_PLAINTEXT")
    short_id = cluster.cluster_id.replace("-", "")[:6]
    hosts = [
        f"b-{n}.{cluster.cluster_name}.{short_id}.c2.kafka.{cluster.region_name}.amazonaws.com"
        for n in range(1, (cluster.number_of_broker_nodes or 1) + 1)
    ]

    def at(port: int) -> str:
        return ",".join(f"{host}:{port}" for host in hosts)

    found: dict[str, str] = {}
    if client_broker in ("PLAINTEXT", "TLS_PLAINTEXT") and unauthenticated:
        found["bootstrapBrokerString"] = at(PLAINTEXT)
    if tls and unauthenticated:
        found["bootstrapBrokerStringTls"] = at(TLS)
    if tls and (sasl.get("scram") or {}).get("enabled"):
        found["bootstrapBrokerStringSaslScram"] = at(SCRAM)
    if tls and (sasl.get("iam") or {}).get("enabled"):
        found["bootstrapBrokerStringSaslIam"] = at(IAM)
    return found


def _arn(response: responses.KafkaResponse, suffix: str) -> str:
    return unquote(response.parsed_url.path.split("/clusters/")[-1].removesuffix(suffix))


def _get_bootstrap_brokers(self: responses.KafkaResponse) -> str:
    cluster = _cluster(self.kafka_backend, _arn(self, "/bootstrap-brokers"))
    return json.dumps(bootstrap_brokers(cluster))


_SCRAM: dict[str, list[str]] = {}  # cluster ARN -> associated secret ARNs


def _batch_associate_scram_secret(self: responses.KafkaResponse) -> str:
    arn = _arn(self, "/scram-secrets")
    _cluster(self.kafka_backend, arn)
    secrets = _SCRAM.setdefault(arn, [])
    secrets.extend(s for s in self._get_param("secretArnList") or [] if s not in secrets)
    return json.dumps({"clusterArn": arn, "unprocessedScramSecrets": []})


def _batch_disassociate_scram_secret(self: responses.KafkaResponse) -> str:
    arn = _arn(self, "/scram-secrets")
    gone = set(self._get_param("secretArnList") or [])
    _SCRAM[arn] = [s for s in _SCRAM.get(arn, []) if s not in gone]
    return json.dumps({"clusterArn": arn, "unprocessedScramSecrets": []})


def _list_scram_secrets(self: responses.KafkaResponse) -> str:
    arn = _arn(self, "/scram-secrets")
    _cluster(self.kafka_backend, arn)
    return json.dumps({"secretArnList": _SCRAM.get(arn, [])})


def _found_first(describe: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``describe``, answering 404 for a cluster that is gone."""

    def found_first(self: models.KafkaBackend, cluster_arn: str) -> dict[str, Any]:
        _cluster(self, cluster_arn)
        return describe(self, cluster_arn)

    return found_first


_CONDITIONAL_PUTS = threading.Lock()


def _atomic_conditional_puts() -> None:
    from moto.s3.responses import S3Response

    put = S3Response.put_object

    def put_object(self: S3Response) -> Any:
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with _CONDITIONAL_PUTS:
                return put(self)
        return put(self)

    S3Response.put_object = put_object  # type: ignore[method-assign]


_TAG_WRITES = threading.Lock()


def _whole(write: Callable[..., bool]) -> Callable[..., bool]:
    """``write`` (TagBackend.create_tags and its kin) made on copies of the
    resources' tag dicts, each then put in place whole: a thread reading
    tags meanwhile sees the old dict or the new one, never one changing."""

    def whole(self: Any, resource_ids: list[str], tags: Any) -> bool:
        with _TAG_WRITES:
            copies = {r: dict(self.tags[r]) for r in resource_ids if r in self.tags}
            aside = types.SimpleNamespace(tags=defaultdict(dict, copies))
            done = write(aside, resource_ids, tags)  # moto's own checks, on the copies
            for r in resource_ids:
                self.tags[r] = aside.tags[r]
            return done

    return whole


def _once_per_client_token(
    create: Callable[[Any], Any], stands: Callable[[Any, Any], bool]
) -> Callable[[Any], Any]:
    """``create`` (an EC2 Create* answer) made once per ClientToken: a retry
    with a token already seen gets the answer that token had, while what it
    made still ``stands(backend, answer)``, as EC2 answers a retry."""
    answers: dict[tuple[str, str], Any] = {}  # (account and region, ClientToken) -> answer
    lock = threading.Lock()

    def once(self: Any) -> Any:
        token = self._get_param("ClientToken")
        if not token:
            return create(self)
        key = (f"{self.current_account}/{self.region}", token)
        with lock:
            answer = answers.get(key)
            if answer is None or not stands(self.ec2_backend, answer):
                answer = answers[key] = create(self)
            return answer

    return once


def _tags_whole_and_creates_once() -> None:
    from moto.ec2.models.tags import TagBackend
    from moto.ec2.responses.launch_templates import LaunchTemplates
    from moto.ec2.responses.route_tables import RouteTables

    for name in ("create_tags", "delete_tags", "delete_tag_keys"):
        setattr(TagBackend, name, _whole(getattr(TagBackend, name)))
    RouteTables.create_route_table = _once_per_client_token(  # type: ignore[method-assign,assignment]
        RouteTables.create_route_table,
        lambda backend, answer: answer.result["RouteTable"].id in backend.route_tables,
    )
    LaunchTemplates.create_launch_template = _once_per_client_token(  # type: ignore[method-assign,assignment]
        LaunchTemplates.create_launch_template,
        lambda backend, answer: (
            answer.result["LaunchTemplate"]["LaunchTemplateId"] in backend.launch_templates
        ),
    )


_RULE_WRITES = threading.RLock()


def _not_held(backend: Any, call: inspect.BoundArguments, direction: str) -> list[str]:
    """The rule ids a revoke (``direction``: ingress or egress) names that
    its group, where there is one, does not hold."""
    ids = call.arguments.get("security_rule_ids") or []
    if not ids:
        return []
    group = backend.get_security_group_by_name_or_id(
        call.arguments["group_name_or_id"], call.arguments.get("vpc_id")
    )
    if group is None:  # moto's own InvalidGroup.NotFound follows
        return []
    held = {r.id for r in getattr(group, f"{direction}_rules")}
    return [i for i in ids if i not in held]


def _rule_writes_whole() -> None:
    """Security group rules: each write under one lock, and a revoke that
    names a rule id the group does not hold answered as EC2 answers it."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.security_groups import SecurityGroupBackend

    def serialised(write: Callable[..., Any], *, direction: str | None) -> Callable[..., Any]:
        signature = inspect.signature(write)

        def one_at_a_time(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _RULE_WRITES:
                if direction is not None and (
                    missing := _not_held(self, signature.bind(self, *args, **kwargs), direction)
                ):
                    raise EC2ClientError(
                        "InvalidSecurityGroupRuleId.NotFound",
                        f"The security group rule ID '{missing[0]}' does not exist",
                    )
                return write(self, *args, **kwargs)

        return one_at_a_time

    for direction in ("ingress", "egress"):
        for verb in ("authorize", "revoke"):
            name = f"{verb}_security_group_{direction}"
            write = getattr(SecurityGroupBackend, name)
            checked = direction if verb == "revoke" else None
            setattr(SecurityGroupBackend, name, serialised(write, direction=checked))


def _patch() -> None:
    _atomic_conditional_puts()
    _tags_whole_and_creates_once()
    _rule_writes_whole()
    created = models.FakeKafkaCluster.__init__

    def active_at_once(self: models.FakeKafkaCluster, *args: Any, **kwargs: Any) -> None:
        created(self, *args, **kwargs)
        if self.cluster_type == "PROVISIONED":
            self.state = "ACTIVE"

    models.FakeKafkaCluster.__init__ = active_at_once  # type: ignore[method-assign]
    for name in ("describe_cluster", "describe_cluster_v2"):
        setattr(models.KafkaBackend, name, _found_first(getattr(models.KafkaBackend, name)))
    responses.KafkaResponse.get_bootstrap_brokers = _get_bootstrap_brokers  # type: ignore[attr-defined]
    responses.KafkaResponse.batch_associate_scram_secret = _batch_associate_scram_secret  # type: ignore[attr-defined]
    responses.KafkaResponse.batch_disassociate_scram_secret = _batch_disassociate_scram_secret  # type: ignore[attr-defined]
    responses.KafkaResponse.list_scram_secrets = _list_scram_secrets  # type: ignore[attr-defined]


if __name__ == "__main__":
    _patch()
    main(sys.argv[1:])
