"""The managed brokers of deploy/terraform on the parsed HCL (python-hcl2),
checked against what the fleet reads: the URL and port of each MSK client
authentication, the Kafka permissions of the two roles, the SCRAM secret,
Amazon MQ's URL and management API, and the password file the instances get.

``terraform test`` (deploy/terraform/tests/fleet.tftest.hcl) checks the
values these expressions produce; these tests tie the expressions to the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from fleet.contract import Priority
from fleet.settings import BROKER, resolve_password
from fleet.transport import _kafka_security as security
from fleet.transport.base import DEAD_LETTER, DEAD_LETTER_TAP, HEARTBEATS, REPLY_PREFIX, queue_name
from fleet.transport.kafka import REPLIES
from tests.deploy.test_terraform import TF, block, config, template

pytestmark = pytest.mark.deploy

MSK_PORTS = {"iam": 9098, "scram": 9096, "tls": 9094, "plaintext": 9092}
"""MSK's client port for each client authentication."""
MSK_BOOTSTRAP = {
    "iam": "bootstrap_brokers_sasl_iam",
    "scram": "bootstrap_brokers_sasl_scram",
    "tls": "bootstrap_brokers_tls",
    "plaintext": "bootstrap_brokers",
}
KAFKA_SCHEMES = {
    "kafka": "PLAINTEXT",
    "kafka+ssl": "SSL",
    "kafka+sasl": "SASL_PLAINTEXT",
    "kafka+sasl+ssl": "SASL_SSL",
}
"""The Kafka transport's URL contract: the scheme picks security.protocol."""
MSK_EXPECTED = {
    "iam": ("SASL_SSL", "AWS_MSK_IAM"),
    "scram": ("SASL_SSL", "SCRAM-SHA-512"),
    "tls": ("SSL", None),
    "plaintext": ("PLAINTEXT", None),
}
KAFKA_ROLE_DOCS = ("worker_kafka", "autoscaler_kafka", "producer_kafka")


def _msk_url(mode: dict[str, Any]) -> str:
    """The URL broker.tf builds for one mode, with sample hosts, user and region."""
    hosts = ",".join(f"b-{i}.fleet.kafka.us-east-1.amazonaws.com:{mode['port']}" for i in (1, 2))
    user = mode["user"].replace("${var.broker_username}", "fleet")
    query = mode["query"].replace("${local.region}", "us-east-1")
    return f"{mode['scheme']}://{user}{hosts}{query}"


def _quoted(expression: str) -> set[str]:
    return set(re.findall(r'"([^"]+)"', expression))


# ---------------------------------------------------------------------------
# MSK: URL, port and encryption per client authentication
# ---------------------------------------------------------------------------


def test_msk_auth_modes_default_to_iam_and_plaintext_is_an_opt_in() -> None:
    variable = config()["variable"]["msk_auth"]
    assert variable["default"] == "iam"
    (rule,) = block(variable, "validation")
    assert _quoted(rule["condition"]) == set(MSK_PORTS)
    assert "WARNING" in variable["description"] and "plaintext" in variable["description"]
    assert "msk_client_broker" not in config()["variable"]
    broker_tf = (TF / "main.tf").read_text(encoding="utf-8")  # the root: it sees the variables
    assert 'check "msk_plaintext"' in broker_tf
    assert '!(var.broker == "kafka" && var.msk_auth == "plaintext")' in broker_tf


def test_msk_url_scheme_matches_auth_mode_and_port() -> None:
    modes = config()["locals"]["msk_modes"]
    assert set(modes) == set(MSK_PORTS)
    bootstrap = config()["locals"]["msk_bootstrap"]
    for name, mode in modes.items():
        protocol, mechanism = MSK_EXPECTED[name]
        assert int(mode["port"]) == MSK_PORTS[name], name
        assert KAFKA_SCHEMES[mode["scheme"]] == protocol, name
        assert f"{name} = aws_msk_cluster.this[0].{MSK_BOOTSTRAP[name]}" in bootstrap, name
        url = urlsplit(_msk_url(mode))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        assert query.get("sasl_mechanism") == mechanism, name
        # A user only for SCRAM; a password never.
        assert url.username == ("fleet" if name == "scram" else None), name
        assert url.password is None, name
        assert {urlsplit(f"//{h}").port for h in url.netloc.rpartition("@")[2].split(",")} == {
            MSK_PORTS[name]
        }, name
    assert modes["iam"]["query"].endswith("aws_region=${local.region}")
    url = config()["locals"]["msk_url"]
    assert "${local.msk_mode.scheme}://${local.msk_mode.user}${local.msk_bootstrap}" in url


def test_msk_urls_are_what_the_kafka_transport_takes() -> None:
    assert security.PROTOCOLS == KAFKA_SCHEMES
    for name, mode in config()["locals"]["msk_modes"].items():
        url = _msk_url(mode)
        protocol, mechanism = MSK_EXPECTED[name]
        assert security.PROTOCOLS[mode["scheme"]] == protocol, name
        if mechanism is not None:
            assert mechanism in security.MECHANISMS, name
        env = {} if name == "iam" else {"FLEET_BROKER_PASSWORD": "pw"}  # IAM signs, no password
        parsed = security.KafkaSecurity.from_url(url, env=env)
        assert (parsed.protocol, parsed.mechanism) == (protocol, mechanism), name


def test_broker_ports_follow_the_auth_mode() -> None:
    ports = config()["locals"]["managed_broker_ports"]
    assert ports["kafka"] == ["${local.msk_mode.port}"]
    assert ports["rabbitmq"] == [5671, 443]
    msk = config()["resource"]["aws_msk_cluster.this"]
    (enc,) = block(msk, "encryption_info")
    (transit,) = block(enc, "encryption_in_transit")
    # TLS for every client authentication but the plaintext opt-in
    assert transit["client_broker"] == '${var.msk_auth == "plaintext" ? "PLAINTEXT" : "TLS"}'
    (auth,) = block(msk, "client_authentication")
    assert auth["unauthenticated"] == '${contains(["tls", "plaintext"], var.msk_auth)}'
    (sasl,) = block(auth, "dynamic")
    assert sasl["sasl"]["for_each"] == (
        '${contains(["iam", "scram"], var.msk_auth) ? [var.msk_auth] : []}'
    )


# ---------------------------------------------------------------------------
# MSK with IAM access control: the roles' kafka-cluster permissions
# ---------------------------------------------------------------------------


def test_kafka_names_are_the_transports() -> None:
    locals_ = config()["locals"]
    assert locals_["kafka_dead_letter"] == DEAD_LETTER
    assert locals_["kafka_heartbeats"] == HEARTBEATS
    assert locals_["kafka_inbox_wildcard"] == REPLY_PREFIX + "*"
    assert locals_["kafka_replies"] == REPLIES  # the shared reply topic (inbox=shared)
    assert locals_["kafka_priorities"] == [p.label for p in Priority]
    template = re.search(r'"(fleet\.\$\{m\}\.\$\{p\})"', locals_["kafka_model_topics"])
    assert template, locals_["kafka_model_topics"]
    for p in Priority:
        topic = template[1].replace("${m}", "digits").replace("${p}", p.label)
        assert topic == queue_name("digits", p)
    # Consumer groups are named after their topics (fleet/transport/_kafka_consumer.py),
    # but for the dead letters' tap
    consumer = (TF.parents[1] / "fleet" / "transport" / "_kafka_consumer.py").read_text("utf-8")
    assert "self.group = group or topic" in consumer
    assert locals_["kafka_dead_letter_tap"] == DEAD_LETTER_TAP
    assert locals_["kafka_model_group_arns"] == (
        '${[for t in local.kafka_model_topics : "${local.msk_group_arn}${t}"]}'
    )


def _kafka_statements(doc: str) -> list[dict[str, Any]]:
    body = config()["data"][f"aws_iam_policy_document.{doc}"]
    assert body["count"] == "${local.msk_iam ? 1 : 0}", doc
    return block(body, "statement")


def _resources(st: dict[str, Any]) -> list[str]:
    value = st["resources"]
    return value if isinstance(value, list) else [value]


def test_kafka_permissions_are_scoped_to_the_cluster_and_the_fleets_names() -> None:
    locals_ = config()["locals"]
    assert locals_["msk_cluster_arn"] == '${local.msk_iam ? aws_msk_cluster.this[0].arn : ""}'
    assert locals_["msk_topic_arn"] == '${replace(local.msk_cluster_arn, ":cluster/", ":topic/")}/'
    assert locals_["msk_group_arn"] == '${replace(local.msk_cluster_arn, ":cluster/", ":group/")}/'
    allowed = {
        "${local.msk_cluster_arn}",
        "${local.kafka_model_topic_arns}",
        "${local.kafka_model_group_arns}",
        "${local.msk_group_arn}${local.kafka_dead_letter_tap}",
        "${local.msk_topic_arn}${local.kafka_dead_letter}",
        "${local.msk_topic_arn}${local.kafka_heartbeats}",
        "${local.msk_topic_arn}${local.kafka_replies}",
        "${local.msk_topic_arn}${local.kafka_inbox_wildcard}",
    }
    for doc in KAFKA_ROLE_DOCS:
        for st in _kafka_statements(doc):
            assert all(a.startswith("kafka-cluster:") and "*" not in a for a in st["actions"])
            assert set(_resources(st)) <= allowed, (doc, st["sid"])
            cluster = [a for a in st["actions"] if "Cluster" in a or a.endswith(":Connect")]
            if cluster or "Idempotently" in " ".join(st["actions"]):
                assert _resources(st) == ["${local.msk_cluster_arn}"], (doc, st["sid"])


def _grants(doc: str) -> dict[str, set[str]]:
    """action -> the resources granted it."""
    out: dict[str, set[str]] = {}
    for st in _kafka_statements(doc):
        for action in st["actions"]:
            out.setdefault(action.removeprefix("kafka-cluster:"), set()).update(_resources(st))
    return out


def _topic(local: str) -> str:
    return f"${{local.msk_topic_arn}}${{local.kafka_{local}}}"


def test_worker_kafka_permissions() -> None:
    grants = _grants("worker_kafka")
    models, groups = "${local.kafka_model_topic_arns}", "${local.kafka_model_group_arns}"
    dead, beats, replies, inbox = map(
        _topic, ("dead_letter", "heartbeats", "replies", "inbox_wildcard")
    )
    tap = "${local.msk_group_arn}${local.kafka_dead_letter_tap}"
    assert grants["ReadData"] == {models, dead}  # the dead letters: ending dead jobs failed
    assert grants["AlterGroup"] == grants["DescribeGroup"] == {groups, tap}
    assert grants["WriteData"] == {models, dead, beats, replies, inbox}
    assert grants["CreateTopic"] == {models, dead, beats, replies}
    assert grants["DescribeTopic"] == {models, dead, beats, replies, inbox}
    assert grants["WriteDataIdempotently"] == {"${local.msk_cluster_arn}"}
    # The fleet deletes only a client's own reply topic, on close.
    assert "DeleteTopic" not in grants
    # job_notify's topic, only where it is set
    (notify,) = config()["data"]["aws_iam_policy_document.worker_kafka"]["dynamic"]
    assert notify["statement"]["for_each"] == "${var.job_notify == null ? [] : [var.job_notify]}"
    (content,) = notify["statement"]["content"]
    assert content["resources"] == ["${local.msk_topic_arn}${statement.value}"]
    assert {a.removeprefix("kafka-cluster:") for a in content["actions"]} == {
        "CreateTopic",
        "DescribeTopic",
        "WriteData",
    }


def test_autoscaler_kafka_permissions() -> None:
    grants = _grants("autoscaler_kafka")
    models, groups = "${local.kafka_model_topic_arns}", "${local.kafka_model_group_arns}"
    dead, beats, replies = map(_topic, ("dead_letter", "heartbeats", "replies"))
    assert grants["ReadData"] == {beats}
    assert grants["DescribeGroup"] == {groups}
    assert grants["CreateTopic"] == grants["DescribeTopic"] == {models, dead, beats, replies}
    for action in ("WriteData", "AlterGroup", "DeleteTopic"):
        assert action not in grants, action
    # Its transport's idempotent producer asks for a producer id at start.
    assert grants["WriteDataIdempotently"] == {"${local.msk_cluster_arn}"}


def test_producers_may_delete_only_their_reply_topics() -> None:
    grants = _grants("producer_kafka")
    replies, inbox = map(_topic, ("replies", "inbox_wildcard"))
    assert grants["DeleteTopic"] == {inbox}
    assert grants["ReadData"] == {replies, inbox}
    assert "AlterGroup" not in grants
    output = config()["output"]["kafka_producer_policy_json"]
    assert output["value"] == "${module.broker.producer_kafka_policy_json}"
    module_output = config()["modules"]["broker"]["output"]["producer_kafka_policy_json"]
    assert "data.aws_iam_policy_document.producer_kafka[0].json" in module_output["value"]


def test_kafka_policies_attach_to_the_roles_only_with_iam() -> None:
    broker_outputs = config()["modules"]["broker"]["output"]
    assert broker_outputs["msk_iam"]["value"] == "${local.msk_iam}"
    for role, module in (("worker", "worker_group"), ("autoscaler", "autoscaler")):
        policy = config()["resource"][f"aws_iam_role_policy.{role}_kafka"]
        assert policy["count"] == "${var.kafka_iam ? 1 : 0}"
        assert policy["role"] == f"${{aws_iam_role.{role}.id}}"
        assert policy["policy"] == "${var.kafka_policy_json}"
        group = config()["resource"][f"aws_autoscaling_group.{role}"]
        assert f"${{aws_iam_role_policy.{role}_kafka}}" in group["depends_on"]
        # The root hands each module its role's document from the broker module.
        call = config()["module"][module]
        assert call["kafka_iam"] == "${module.broker.msk_iam}", role
        assert call["kafka_policy_json"] == f"${{module.broker.{role}_kafka_policy_json}}", role
        document = broker_outputs[f"{role}_kafka_policy_json"]["value"]
        assert document == (
            f"${{local.msk_iam ? data.aws_iam_policy_document.{role}_kafka[0].json : null}}"
        ), role
    assert config()["locals"]["msk_iam"] == '${var.broker == "kafka" && var.msk_auth == "iam"}'


# ---------------------------------------------------------------------------
# SASL/SCRAM: the secret MSK reads
# ---------------------------------------------------------------------------


def test_scram_secret_is_named_for_msk_and_encrypted_with_the_fleet_key() -> None:
    secret = config()["resource"]["aws_secretsmanager_secret.msk_scram"]
    assert secret["count"] == "${local.msk_scram ? 1 : 0}"
    assert secret["name_prefix"].startswith("AmazonMSK_")
    assert secret["kms_key_id"] == "${var.kms_key_arn}"
    assert config()["module"]["broker"]["kms_key_arn"] == "${aws_kms_key.fleet.arn}"
    version = config()["resource"]["aws_secretsmanager_secret_version.msk_scram"]
    assert "username = var.broker_username" in version["secret_string"]
    assert (
        "password = data.aws_secretsmanager_random_password.msk_scram[0].random_password"
        in (version["secret_string"])
    )
    association = config()["resource"]["aws_msk_scram_secret_association.this"]
    assert association["cluster_arn"] == "${aws_msk_cluster.this[0].arn}"
    assert association["secret_arn_list"] == ["${aws_secretsmanager_secret.msk_scram[0].arn}"]
    # MSK attaches its own resource policy when associating: none is managed here.
    assert not any(k.startswith("aws_secretsmanager_secret_policy.") for k in config()["resource"])


# ---------------------------------------------------------------------------
# Amazon MQ: AMQPS as the application user, the management API named
# ---------------------------------------------------------------------------


def test_amazon_mq_url_is_amqps_as_the_application_user() -> None:
    locals_ = config()["locals"]
    assert (
        'format("amqps://%s@%s:5671?management_url=%s", var.broker_username' in (locals_["mq_url"])
    )
    assert "urlencode(local.mq_management_url)" in locals_["mq_url"]
    assert "instances[0].console_url" in locals_["mq_management_url"]
    mq = config()["resource"]["aws_mq_broker.this"]
    (user,) = block(mq, "user")
    assert user["username"] == "${var.mq_admin_username}"
    (lifecycle,) = block(mq, "lifecycle")
    (post,) = block(lifecycle, "postcondition")
    assert "^amqps://[^:/]+:5671$" in post["condition"].replace("\\\\", "\\")
    assert config()["variable"]["broker_username"]["default"] == "fleet"
    assert config()["variable"]["mq_admin_username"]["default"] != "fleet"


def test_amazon_mq_url_with_its_password_file_reaches_the_management_api(tmp_path: Path) -> None:
    # What the worker and the autoscaler do with the URL and the file parameter.
    from fleet.transport import connect

    console = "https://b-1234.mq.us-east-1.amazonaws.com"
    endpoint = "amqps://fleet@b-1234.mq.us-east-1.amazonaws.com:5671"
    url = f"{endpoint}?management_url={quote(console, safe='')}"
    secret = tmp_path / "FLEET_BROKER_PASSWORD_FILE"
    secret.write_text("app-password\n", encoding="utf-8")
    resolved = resolve_password(url, BROKER, env={f"{BROKER}_PASSWORD_FILE": str(secret)})
    assert urlsplit(resolved).password == "app-password"
    transport = connect(resolved)
    assert transport._management == console  # type: ignore[attr-defined]
    api = transport._management_api  # type: ignore[attr-defined]
    assert (api.username, api.password) == ("fleet", "app-password")


# ---------------------------------------------------------------------------
# The password as a file parameter
# ---------------------------------------------------------------------------


def test_broker_password_reaches_both_roles_as_a_file_parameter() -> None:
    assert config()["locals"]["broker_password_variable"] == f"{BROKER}_PASSWORD_FILE"
    assert config()["locals"]["broker_password_file"] == (
        '${var.broker == "rabbitmq" || local.msk_scram}'
    )
    broker_outputs = config()["modules"]["broker"]["output"]
    assert broker_outputs["password_file"]["value"] == "${local.broker_password_file}"
    assert broker_outputs["password"]["value"] == "${local.broker_password}"
    assert broker_outputs["password"]["sensitive"] is True
    for role, module in (("worker", "worker_group"), ("autoscaler", "autoscaler")):
        call = config()["module"][module]
        assert call["broker_password_file"] == "${module.broker.password_file}", role
        assert call["broker_password"] == "${module.broker.password}", role
        param = config()["resource"][f"aws_ssm_parameter.{role}_broker_password"]
        assert param["count"] == "${var.broker_password_file ? 1 : 0}"
        assert param["type"] == "SecureString"
        assert param["name"] == (
            f"${{local.{role}_file_parameter_path}}/${{local.broker_password_variable}}"
        )
        assert param["value"] == "${var.broker_password}"
        assert config()["modules"][module]["variable"]["broker_password"]["sensitive"] is True
        assert config()["locals"][f"{role}_file_parameter_path"] == f"/${{var.name}}/{role}/files"
        # The role may read its file parameters, and only its own.
        (doc,) = [
            st
            for st in block(config()["data"][f"aws_iam_policy_document.{role}"], "statement")
            if st.get("sid") == "ReadOwnParameters"
        ]
        assert (
            f"${{local.parameter_arn_prefix}}${{local.{role}_file_parameter_path}}/*"
            in (doc["resources"])
        )
        other = "autoscaler" if role == "worker" else "worker"
        assert not any(other in r for r in doc["resources"]), role
        # The boot script writes each file parameter into a file the container's
        # user alone reads, mounts it read-only and names it in the environment.
        run = template(f"{role}-run.sh.tftpl").read_text(encoding="utf-8")
        assert "FILE_PARAMETER_PATH='${file_parameter_path}'" in run
        assert '--path "$FILE_PARAMETER_PATH"' in run
        assert 'chown "$CONTAINER_UID" "$file"' in run and 'chmod 0400 "$file"' in run
        assert 'printf \'%s=%s\\n\' "$${name##*/}" "$file" >>"$env_file"' in run
        assert '--volume "$FILES_DIR:$FILES_DIR:ro"' in run
        launch = config()["resource"][f"aws_launch_template.{role}"]["user_data"]
        assert f"local.{role}_file_parameter_path" in launch
    # The URL names the user only: no secret version is read into it.
    for name in ("mq_url", "msk_url"):
        assert "secret" not in config()["locals"][name], name


# ---------------------------------------------------------------------------
# README: creating the Amazon MQ application user
# ---------------------------------------------------------------------------


def _readme() -> str:
    return (TF / "README.md").read_text(encoding="utf-8")


def test_readme_names_only_outputs_that_exist() -> None:
    named = set(re.findall(r"terraform output (?:-raw )?([a-z_]+)", _readme()))
    named |= set(re.findall(r"\bsecret ([a-z_]+_arn)\b", _readme()))
    assert {"broker_client_url", "broker_admin_secret_arn", "models_uri"} <= named
    assert named <= set(config()["output"]), named - set(config()["output"])


def test_readme_creates_the_application_user_with_the_tested_permissions() -> None:
    import json

    section = _readme().split("### Amazon MQ: the fleet's user", 1)[1].split("\n```\n", 1)[0]
    heredocs = re.findall(r"<<'?JSON'?\n(.*?)\nJSON(?:\n|$)", section, re.DOTALL)
    assert len(heredocs) == 2, heredocs
    password = '"$(secret broker_password_secret_arn)"'
    assert password in heredocs[0]
    user = json.loads(heredocs[0].replace(password, '"x"'))
    permissions = json.loads(heredocs[1])
    assert user == {"password": "x", "tags": "management"}  # the management API, own vhost
    script = (TF.parents[1] / "scripts" / "rabbitmq.sh").read_text(encoding="utf-8")
    names = re.search(r"^FLEET_NAMES='(.*)'$", script, re.MULTILINE)
    write = re.search(r"^FLEET_WRITE='(.*)'$", script, re.MULTILINE)
    assert names and write
    assert permissions == {"configure": names[1], "write": write[1], "read": names[1]}
    # The passwords never are command-line arguments.
    assert not re.search(r"curl[^\n]*\s(-u|--user)\s", section)
    assert section.count("--config <(printf") == 2
