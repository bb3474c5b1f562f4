"""How a Kafka URL connects: TLS, SASL and their secrets.

The scheme picks the protocol, the query the rest::

    kafka://h1:9092,h2:9092                         PLAINTEXT
    kafka+ssl://h1:9094/?cafile=/etc/ca.pem         SSL (certificate checked
                                                    against cafile, else the
                                                    system's trust store)
    kafka+sasl+ssl://fleet@h1:9096/?sasl_mechanism=SCRAM-SHA-512
                                                    SASL over TLS
    kafka+sasl://fleet@h1:9092/?sasl_mechanism=PLAIN
                                                    SASL without TLS
    kafka+sasl+ssl://h1:9098/?sasl_mechanism=AWS_MSK_IAM&aws_region=eu-west-1
                                                    Amazon MSK with IAM: a token
                                                    signed with the process's AWS
                                                    credentials (OAUTHBEARER)

Query parameters: ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``,
``SCRAM-SHA-512`` (the default), ``AWS_MSK_IAM``), ``cafile``, and ``certfile``
with ``keyfile`` for mutual TLS, ``aws_region`` for IAM (else ``AWS_REGION`` or
``AWS_DEFAULT_REGION``).

The user is the URL's; the password is the URL's if it has one (avoid that),
else ``$FLEET_BROKER_PASSWORD`` or the contents of the file
``$FLEET_BROKER_PASSWORD_FILE`` names. It never appears in a ``repr``.

Every mistake that settings alone make is a :class:`~fleet.errors.ConfigError`
at once, before any connection: a mechanism that does not exist, certificate
files on a protocol without TLS, a user without a password, a password sent in
the clear with PLAIN. A broker that refuses the credentials or a certificate
is :class:`~fleet.errors.AuthenticationFailed` at connect (see
:func:`diagnose`), not a retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from fleet.errors import AuthenticationFailed, ConfigError, NotAuthorized
from fleet.redact import redact_url
from fleet.settings import BROKER, password_from_env

PROTOCOLS: dict[str, str] = {
    "kafka": "PLAINTEXT",
    "kafka+ssl": "SSL",
    "kafka+sasl": "SASL_PLAINTEXT",
    "kafka+sasl+ssl": "SASL_SSL",
}
"""URL scheme -> Kafka's ``security.protocol``."""
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM")
DEFAULT_MECHANISM = "SCRAM-SHA-512"
AWS_MSK_IAM = "AWS_MSK_IAM"
URL_PARAMS = frozenset({"sasl_mechanism", "cafile", "certfile", "keyfile", "aws_region"})
"""The query parameters this module reads; not transport options."""
_DIAGNOSE_TIMEOUT = 5.0
_CLOSE_WAIT_S = 2.0  # how long the second look waits for its socket to close


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaSecurity:
    """The security settings of one Kafka URL."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    aws_region: str | None = None

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @classmethod
    def from_url(cls, url: str, env: dict[str, str] | None = None) -> KafkaSecurity:
        """The settings ``url`` names; a :class:`ConfigError` for any that
        cannot work together."""
        env = dict(os.environ) if env is None else env
        parts = urlsplit(url)
        protocol = PROTOCOLS.get(parts.scheme)
        if protocol is None:
            known = ", ".join(f"{s}://" for s in PROTOCOLS)
            raise ConfigError(f"Kafka URL scheme {parts.scheme!r} is not one of {known}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        userinfo = parts.netloc.rpartition("@")[0]
        user, has_password, password = userinfo.partition(":")
        security = cls(
            protocol=protocol,
            mechanism=query.get("sasl_mechanism")
            or (DEFAULT_MECHANISM if "SASL" in protocol else None),
            username=unquote(user) or None,
            password=unquote(password) if has_password else password_from_env(BROKER, env),
            cafile=query.get("cafile") or None,
            certfile=query.get("certfile") or None,
            keyfile=query.get("keyfile") or None,
            aws_region=query.get("aws_region")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION"),
        )
        security.check(redact_url(url))
        return security

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` if these settings cannot work."""
        if not self.tls and (self.cafile or self.certfile or self.keyfile):
            raise ConfigError(
                f"{where}: cafile/certfile/keyfile need TLS: use kafka+ssl:// or kafka+sasl+ssl://"
            )
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError(f"{where}: mutual TLS needs both certfile and keyfile")
        if not self.sasl:
            if self.username or self.mechanism:
                raise ConfigError(
                    f"{where}: a user or sasl_mechanism needs SASL: use kafka+sasl+ssl:// (or kafka+sasl://)"
                )
            return
        if self.mechanism not in MECHANISMS:
            raise ConfigError(
                f"{where}: sasl_mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        if self.mechanism == AWS_MSK_IAM:
            self._check_iam(where)
            return
        if not self.username:
            raise ConfigError(
                f"{where}: SASL {self.mechanism} needs a user: kafka+sasl+ssl://USER@host:port"
            )
        if not self.password:
            raise ConfigError(
                f"{where}: no password for {self.username!r}:"
                f" set {BROKER}_PASSWORD or {BROKER}_PASSWORD_FILE"
            )
        if self.mechanism == "PLAIN" and not self.tls and not _loopback_only(where):
            raise ConfigError(
                f"{where}: SASL PLAIN without TLS sends the password in the clear: use kafka+sasl+ssl://"
            )

    def _check_iam(self, where: str) -> None:
        if not self.tls:
            raise ConfigError(f"{where}: AWS_MSK_IAM needs TLS: use kafka+sasl+ssl://")
        if self.username or self.password:
            raise ConfigError(
                f"{where}: AWS_MSK_IAM takes no user or password (it signs with AWS credentials)"
            )
        if not self.aws_region:
            raise ConfigError(
                f"{where}: AWS_MSK_IAM needs a region: aws_region= in the URL, or AWS_REGION"
            )
        if importlib.util.find_spec("aws_msk_iam_sasl_signer") is None:
            raise ConfigError(
                f"{where}: AWS_MSK_IAM needs aws-msk-iam-sasl-signer-python:"
                " pip install 'inference-fleet[aws]'"
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context, or None without TLS. A file that cannot be read
        is a :class:`ConfigError`."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"Kafka TLS files: {exc}") from None
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """What every aiokafka client is built with, next to its servers."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.mechanism == AWS_MSK_IAM:
            assert self.aws_region is not None  # check() saw to it
            kwargs["sasl_mechanism"] = "OAUTHBEARER"
            kwargs["sasl_oauth_token_provider"] = MskIamTokens(self.aws_region)
        elif self.sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password
        return kwargs


def _loopback_only(where: str) -> bool:
    """Whether every host in the (redacted) URL is a loopback address: PLAIN
    in the clear is accepted there (a local broker, a test)."""
    hosts = urlsplit(where).netloc.rpartition("@")[2].split(",")
    return all(h.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]") for h in hosts if h)


class MskIamTokens(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens for Amazon MSK's IAM access control: a SigV4-signed
    ``kafka-cluster:Connect`` request made with the process's AWS credentials
    (instance role, environment, profile), renewed for every connection."""

    def __init__(self, region: str) -> None:
        self.region = region

    def __repr__(self) -> str:
        return f"MskIamTokens(region={self.region!r})"

    async def token(self) -> str:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        # signing reads credentials (maybe from the instance metadata service): off the loop
        token, _expiry_ms = await asyncio.to_thread(
            MSKAuthTokenProvider.generate_auth_token, self.region
        )
        return str(token)


async def diagnose(host: str, security: KafkaSecurity, timeout: float = _DIAGNOSE_TIMEOUT) -> None:
    """After a failed bootstrap: connect to ``host`` once more, alone, ask it
    for metadata, and raise :class:`AuthenticationFailed` if the broker refused
    our credentials or certificate, or we refused its certificate. Returns
    when the cause was something else (a broker down): the caller's
    :class:`~fleet.errors.Unavailable` stands, to be retried.

    aiokafka logs such causes and reports every one as "unable to bootstrap";
    only a connection of our own can tell a wrong password from a broker that
    is down."""
    name, _, port = host.rpartition(":")
    kwargs = security.client_kwargs()
    # made here rather than by aiokafka's create_conn, so that every path,
    # a failed or cancelled connect included, can wait for its socket to close
    conn = AIOKafkaConnection(
        name.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000), **kwargs
    )
    try:
        async with asyncio.timeout(timeout):
            await conn.connect()
            # TLS 1.3 ends the handshake before the server judges our
            # certificate: its verdict comes with the first answer
            await conn.send(MetadataRequest([]))
    except (KafkaError, OSError, TimeoutError) as exc:
        refused = _refusal(host, security, exc)
        if refused is not None:
            raise refused from None
    finally:
        await _closed(conn)


async def _closed(conn: Any) -> None:
    """Close ``conn`` and wait (a little) until its socket is closed: a TLS
    transport closes only after its close_notify, some loop turns later."""
    closing = conn.close()
    if closing is not None and not closing.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing), _CLOSE_WAIT_S)


AUTHORIZATION_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def raise_if_not_authorized(exc: BaseException, security: KafkaSecurity, doing: str) -> None:
    """Raise the :class:`NotAuthorized` that ``exc`` (or an exception it came
    from) means, if the broker refused a right the user lacks; else return."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, AUTHORIZATION_ERRORS):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return
    who = f"user {security.username!r}" if security.username else "this client"
    what = {
        TopicAuthorizationFailedError: "a topic right",
        GroupAuthorizationFailedError: "a consumer group right",
        ClusterAuthorizationFailedError: "a cluster right (IdempotentWrite for the producer)",
    }[type(seen)]
    raise NotAuthorized(
        f"Kafka refused {who} {what} while {doing} ({type(seen).__name__}):"
        " grant the rights docs/security.md lists for this role"
    ) from exc


def _refusal(host: str, security: KafkaSecurity, exc: BaseException) -> AuthenticationFailed | None:
    """The :class:`AuthenticationFailed` that ``exc`` (or its cause) means, if any."""
    cause = exc.__cause__ if isinstance(exc, KafkaConnectionError) else exc
    if isinstance(exc, (SaslAuthenticationFailed, UnsupportedSaslMechanismError)):
        return AuthenticationFailed(
            f"Kafka at {host} refused the SASL {security.mechanism} login: {exc}"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return AuthenticationFailed(
            f"Kafka at {host}: its TLS certificate is not trusted: {cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
        # an alert from the broker: our client certificate missing or refused
        return AuthenticationFailed(
            f"Kafka at {host} ended the TLS handshake ({cause.reason}):"
            " does it want a client certificate (certfile/keyfile) it trusts?"
        )
    return None  # refused, reset, timed out, ended mid-handshake: a broker away


__all__ = [
    "AUTHORIZATION_ERRORS",
    "MECHANISMS",
    "PROTOCOLS",
    "URL_PARAMS",
    "KafkaSecurity",
    "MskIamTokens",
    "diagnose",
    "raise_if_not_authorized",
]
