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
"""

from __future__ import annotations

import json
import sys
import threading
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


def _patch() -> None:
    _atomic_conditional_puts()
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
