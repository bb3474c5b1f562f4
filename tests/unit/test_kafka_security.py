"""Kafka URLs with TLS and SASL: what each scheme and query builds, every
mistake settings alone make refused before a connection, and no password in
sight."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fleet.errors import ConfigError
from fleet.transport import connect
from fleet.transport._kafka_security import KafkaSecurity, MskIamTokens
from fleet.transport.kafka import KafkaTransport

pytestmark = pytest.mark.unit

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("url", "protocol", "mechanism"),
    [
        ("kafka://h:9092", "PLAINTEXT", None),
        ("kafka+ssl://h:9094", "SSL", None),
        ("kafka+sasl+ssl://fleet:pw@h:9096", "SASL_SSL", "SCRAM-SHA-512"),
        (
            "kafka+sasl+ssl://fleet:pw@h:9096/?sasl_mechanism=SCRAM-SHA-256",
            "SASL_SSL",
            "SCRAM-SHA-256",
        ),
        ("kafka+sasl://fleet:pw@127.0.0.1:9092/?sasl_mechanism=PLAIN", "SASL_PLAINTEXT", "PLAIN"),
        (
            "kafka+sasl+ssl://b-1:9098/?sasl_mechanism=AWS_MSK_IAM&aws_region=eu-west-1",
            "SASL_SSL",
            "AWS_MSK_IAM",
        ),
    ],
)
def test_scheme_and_query_pick_protocol_and_mechanism(
    url: str, protocol: str, mechanism: str | None
) -> None:
    security = KafkaSecurity.from_url(url, NO_ENV)
    assert (security.protocol, security.mechanism) == (protocol, mechanism)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == protocol
    assert isinstance(kwargs.get("ssl_context"), ssl.SSLContext) == security.tls
    if mechanism == "AWS_MSK_IAM":
        assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
        assert isinstance(kwargs["sasl_oauth_token_provider"], MskIamTokens)
    elif mechanism is not None:
        assert kwargs["sasl_mechanism"] == mechanism
        assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("fleet", "pw")
    else:
        assert "sasl_mechanism" not in kwargs


def test_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    url = "kafka+sasl+ssl://fleet@h:9096"
    from_env = KafkaSecurity.from_url(url, {"FLEET_BROKER_PASSWORD": "s3cret"})
    assert from_env.password == "s3cret"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    from_file = KafkaSecurity.from_url(url, {"FLEET_BROKER_PASSWORD_FILE": str(secret)})
    assert from_file.password == "from-file"
    # percent-encoded in the URL, decoded for the broker
    assert KafkaSecurity.from_url("kafka+sasl+ssl://fleet:a%40b@h:1", NO_ENV).password == "a@b"


def test_no_password_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_BROKER_PASSWORD", "hunter22")
    transport = connect("kafka+sasl+ssl://fleet@h:9096/?partitions=2")
    assert isinstance(transport, KafkaTransport)
    assert transport.bootstrap == ["h:9096"]  # the user is no host
    assert "hunter22" not in repr(transport.security)
    assert "hunter22" not in repr(transport.options)
    with pytest.raises(ConfigError) as err:
        connect("kafka+sasl+ssl://fleet:hunter22@h:9096/?sasl_mechanism=MD5")
    assert "hunter22" not in str(err.value)
    assert "MD5" in str(err.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("kafka://h:9092/?cafile=/ca.pem", "need TLS"),
        ("kafka+ssl://h:9094/?certfile=/c.pem", "both certfile and keyfile"),
        ("kafka://fleet:pw@h:9092", "needs SASL"),
        ("kafka+ssl://h:9094/?sasl_mechanism=PLAIN", "needs SASL"),
        ("kafka+sasl+ssl://fleet:pw@h:9096/?sasl_mechanism=GSSAPI", "is not one of"),
        ("kafka+sasl+ssl://h:9096", "needs a user"),
        ("kafka+sasl+ssl://fleet@h:9096", "FLEET_BROKER_PASSWORD"),
        ("kafka+sasl://fleet:pw@mq.example:9092/?sasl_mechanism=PLAIN", "in the clear"),
        ("kafka+sasl://b-1:9098/?sasl_mechanism=AWS_MSK_IAM&aws_region=x", "needs TLS"),
        ("kafka+sasl+ssl://u:p@b-1:9098/?sasl_mechanism=AWS_MSK_IAM&aws_region=x", "no user"),
        ("kafka+sasl+ssl://b-1:9098/?sasl_mechanism=AWS_MSK_IAM", "needs a region"),
        ("kafka+ssl://h:9094/?cafile=/no/such/ca.pem", "TLS files"),
        ("kafka+tls://h:9094", "not known"),
        ("kafka+ssl://h:9094/?ca_file=/ca.pem", "unknown URL option 'ca_file'"),
    ],
)
def test_settings_that_cannot_work_are_config_errors(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        connect(url).security.client_kwargs()  # type: ignore[attr-defined]


def test_a_missing_client_key_is_a_config_error(tmp_path: Path) -> None:
    security = KafkaSecurity.from_url(
        f"kafka+ssl://h:1/?certfile={tmp_path}/c.pem&keyfile={tmp_path}/c.key", NO_ENV
    )
    with pytest.raises(ConfigError, match="Kafka TLS files"):
        security.ssl_context()


async def test_msk_iam_token_is_a_signed_connect_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer runs for real: with static credentials it signs locally."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    token = await MskIamTokens("eu-west-1").token()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/")
    assert "/eu-west-1/kafka-cluster/" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Signature"][0]
    assert "wJalr" not in url
