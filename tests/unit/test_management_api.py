"""Where the RabbitMQ management API is and how the transport logs in: HTTPS on
15671 for ``amqps://``, its own URL and credentials, no password shown."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.transport import connect
from fleet.transport._amqp_management import ManagementApi, management_api

pytestmark = pytest.mark.unit

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("broker", "base"),
    [
        pytest.param("amqp://u:p@mq.example:5672/", "http://mq.example:15672", id="amqp"),
        pytest.param("amqps://u:p@mq.example:5671/", "https://mq.example:15671", id="amqps"),
        pytest.param("amqps://u:p@[::1]:5671/", "https://[::1]:15671", id="amqps-ipv6"),
        pytest.param("amqp://mq.example/", "http://mq.example:15672", id="no-port"),
    ],
)
def test_the_default_follows_the_broker_scheme(broker: str, base: str) -> None:
    assert management_api(broker, env=NO_ENV).base == base


def test_by_default_the_broker_credentials_log_in() -> None:
    api = management_api("amqps://fleet:p%40ss@mq/", env=NO_ENV)
    assert (api.username, api.password) == ("fleet", "p@ss")
    token = base64.b64decode(api.headers["Authorization"].removeprefix("Basic "))
    assert token == b"fleet:p@ss"
    guest = management_api("amqp://mq/", env=NO_ENV)
    assert (guest.username, guest.password) == ("guest", "guest")


def test_its_own_url_and_credentials() -> None:
    api = management_api(
        "amqps://fleet:amqp-pw@mq/", "https://monitor:mon-pw@mgmt.example:443/rabbit/", env=NO_ENV
    )
    assert api.base == "https://mgmt.example:443/rabbit"  # no credentials in the URL
    assert (api.username, api.password) == ("monitor", "mon-pw")


def test_its_own_url_and_password_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "management-password"
    secret.write_text("mon-pw\n", encoding="utf-8")
    env = {
        "FLEET_MANAGEMENT_URL": "https://monitor@mgmt.example:15671",
        "FLEET_MANAGEMENT_PASSWORD_FILE": str(secret),
    }
    api = management_api("amqps://fleet:amqp-pw@mq/", env=env)
    assert api.base == "https://mgmt.example:15671"
    assert (api.username, api.password) == ("monitor", "mon-pw")
    # the option wins over the environment
    assert management_api("amqps://mq/", "http://other:1", env=env).base == "http://other:1"


def test_another_user_without_a_password_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FLEET_MANAGEMENT_PASSWORD"):
        management_api("amqps://fleet:amqp-pw@mq/", "https://monitor@mgmt:15671", env=NO_ENV)


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError, match="http") as bad:
        management_api("amqp://mq/", "ftp://monitor:Zq7pW@mgmt/", env=NO_ENV)
    assert "Zq7pW" not in bad.value.message and "***" in bad.value.message


def test_the_repr_shows_no_password() -> None:
    api = management_api("amqps://mq/", "https://monitor:Zq7pW@mgmt:15671", env=NO_ENV)
    assert "Zq7pW" not in repr(api)
    options = connect(
        "amqps://fleet:Zq7pW@mq/?management_url=https%3A%2F%2Fm%3AZq7pW%40mgmt%3A15671"
    ).options
    assert "Zq7pW" not in repr(options) and "https://m:***@mgmt:15671" in repr(options)


def test_the_amqps_transport_reads_in_flight_counts_over_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLEET_MANAGEMENT_URL", raising=False)
    transport = connect("amqps://fleet:pw@mq.example:5671/")
    api = transport._management_api  # type: ignore[attr-defined]
    assert (api.base, api.username, api.password) == ("https://mq.example:15671", "fleet", "pw")


def _ca_certificate(path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_https_trusts_the_brokers_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    _ca_certificate(ca)
    api = management_api(f"amqps://fleet:pw@mq/?cafile={ca}", env=NO_ENV)
    context = api.ssl_context()
    assert context is not None
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
    plain = ManagementApi(base="https://mq:15671", username="u", password="p")
    assert plain.ssl_context() is None  # the system's CAs
    missing = management_api(f"amqps://mq/?cafile={tmp_path / 'absent.pem'}", env=NO_ENV)
    with pytest.raises(ConfigError, match="TLS"):
        missing.ssl_context()
