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

One call at a time: moto's server answers each request on its own thread,
and moto's backends are not written for that: two conditional S3 PutObjects
can both pass one condition (moto checks, then writes); a read of an EC2
resource's tags fails (``dictionary changed size during iteration``) as
another request tags it, answering 500 after a create has stored what it
made (seen on a loaded machine); a group's rule list rebuilt to revoke one
rule loses a rule another request adds meanwhile. Here every call
holds one lock from its first byte read to its last written (moto's work is
Python under one interpreter lock anyway, so little is lost).

A retried call answered as before: when an answer does not reach the AWS SDK
(a 500 like the above, or lost on its way: seen under load, calls moto had
answered 200 sent again), the SDK sends the call again, with the same
``amz-sdk-invocation-id`` header and the next attempt number in
``amz-sdk-request``. moto carries it out again, and a create then
finds the name its first try took (SSM ``ParameterAlreadyExists``, seen
failing an apply), a delete the thing gone (``InvalidRoute.NotFound`` from
DeleteVpcEndpoints, seen failing a destroy). Here a later attempt of a call
whose earlier attempt was answered 2xx gets that answer again, and moto
does not run it twice; each such replay is logged.

EC2 ClientTokens: CreateRouteTable and CreateLaunchTemplate with a
ClientToken already seen answer what that token made, as EC2 does (moto
makes another: a second route table in a VPC makes DeleteVpc refuse, which
Terraform retries for 20 minutes).

EC2 security group rules: a revoke naming a rule id the group does not hold
is ``InvalidPermission.NotFound`` on moto where EC2 answers
``InvalidSecurityGroupRuleId.NotFound``, which Terraform takes as "already
deleted" on a destroy. Here such a revoke answers EC2's code.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import threading
from collections import OrderedDict
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


_ONE_AT_A_TIME = threading.Lock()
_KEPT_ANSWERS = 4096  # the answers kept for replay, the oldest dropped first
_KEPT_BYTES = 1 << 20  # an answer longer than this is not kept

Answer = tuple[str, list[tuple[str, str]], bytes]  # status, headers, body


def _attempt(environ: dict[str, Any]) -> int:
    """The attempt number the AWS SDK sent (``amz-sdk-request: attempt=2;
    max=25``), 1 where it sent none."""
    for part in environ.get("HTTP_AMZ_SDK_REQUEST", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "attempt" and value.isdigit():
            return int(value)
    return 1


def _call(environ: dict[str, Any]) -> str:
    """A call's service (from its signature's scope), method, path and target."""
    scope = environ.get("HTTP_AUTHORIZATION", "").split("Credential=")[-1].split("/")
    service = scope[3] if len(scope) > 3 else "?"
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    return f"{service} {environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')} {target}".strip()


def _answered(app: Callable[..., Any], environ: dict[str, Any]) -> Answer:
    """What the WSGI ``app`` answers ``environ``, read whole."""
    said: dict[str, Any] = {}
    body: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        said.update(status=status, headers=headers)
        return body.append

    result = app(environ, start_response)
    try:
        body.extend(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return said["status"], said["headers"], b"".join(body)


def one_call_at_a_time(app: Callable[..., Any]) -> Callable[..., Any]:
    """The WSGI ``app`` answering one call at a time, and a later attempt of
    a call (same ``amz-sdk-invocation-id``) whose earlier one it answered
    2xx with that answer again, without running the call twice."""
    answers: OrderedDict[str, Answer] = OrderedDict()

    def answer(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        invocation, attempt = environ.get("HTTP_AMZ_SDK_INVOCATION_ID"), _attempt(environ)
        with _ONE_AT_A_TIME:
            kept = answers.get(invocation) if invocation else None
            if kept is not None and kept[0].startswith("2") and attempt > 1:
                print(
                    f"moto_server: attempt {attempt} of call {invocation} "
                    f"({_call(environ)}): its first answer, {kept[0]}, again",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                kept = _answered(app, environ)
                if invocation and len(kept[2]) <= _KEPT_BYTES:
                    answers[invocation] = kept
                    while len(answers) > _KEPT_ANSWERS:
                        answers.popitem(last=False)
        status, headers, body = kept
        start_response(status, headers)
        return [body]

    return answer


def _once_per_client_token(
    create: Callable[[Any], Any], stands: Callable[[Any, Any], bool]
) -> Callable[[Any], Any]:
    """``create`` (an EC2 Create* answer) made once per ClientToken: a retry
    with a token already seen gets the answer that token had, while what it
    made still ``stands(backend, answer)``, as EC2 answers a retry."""
    answers: dict[tuple[str, str], Any] = {}  # (account and region, ClientToken) -> answer

    def once(self: Any) -> Any:  # one call at a time: the server holds _ONE_AT_A_TIME
        token = self._get_param("ClientToken")
        if not token:
            return create(self)
        key = (f"{self.current_account}/{self.region}", token)
        answer = answers.get(key)
        if answer is None or not stands(self.ec2_backend, answer):
            answer = answers[key] = create(self)
        return answer

    return once


def _creates_once_per_client_token() -> None:
    from moto.ec2.responses.launch_templates import LaunchTemplates
    from moto.ec2.responses.route_tables import RouteTables

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


def _revokes_answer_ec2s_code() -> None:
    """A revoke of security group rules that names a rule id the group does
    not hold answered as EC2 answers it."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.security_groups import SecurityGroupBackend

    def checked(revoke: Callable[..., Any], direction: str) -> Callable[..., Any]:
        signature = inspect.signature(revoke)

        def held_first(self: Any, *args: Any, **kwargs: Any) -> Any:
            if missing := _not_held(self, signature.bind(self, *args, **kwargs), direction):
                raise EC2ClientError(
                    "InvalidSecurityGroupRuleId.NotFound",
                    f"The security group rule ID '{missing[0]}' does not exist",
                )
            return revoke(self, *args, **kwargs)

        return held_first

    for direction in ("ingress", "egress"):
        name = f"revoke_security_group_{direction}"
        setattr(SecurityGroupBackend, name, checked(getattr(SecurityGroupBackend, name), direction))


def _served_one_call_at_a_time() -> None:
    """moto's server application (one per server) answering through
    ``one_call_at_a_time``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication as App

    made, dispatch = App.__init__, App.__call__

    def init(self: App, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self.served = one_call_at_a_time(functools.partial(dispatch, self))  # type: ignore[attr-defined]

    def call(self: App, environ: dict[str, Any], start_response: Any) -> Any:
        return self.served(environ, start_response)  # type: ignore[attr-defined]

    App.__init__ = init  # type: ignore[method-assign]
    App.__call__ = call  # type: ignore[method-assign]


def _patch() -> None:
    _served_one_call_at_a_time()
    _creates_once_per_client_token()
    _revokes_answer_ec2s_code()
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
