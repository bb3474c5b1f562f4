"""Where RabbitMQ's management API is, and with which credentials: the
``amqp://`` transport reads in-flight (unacked) counts there.

- URL: the ``management_url`` option (``?management_url=`` or a keyword),
  else ``$FLEET_MANAGEMENT_URL``, else the broker's host on the scheme's
  default: ``http://host:15672`` for ``amqp://``, ``https://host:15671`` for
  ``amqps://`` (the management plugin's TLS listener).
- User: the management URL's, else the broker URL's, else ``guest``.
- Password: the management URL's, else ``$FLEET_MANAGEMENT_PASSWORD`` or the
  file ``$FLEET_MANAGEMENT_PASSWORD_FILE`` names, else (for the broker's own
  user) the broker URL's, else ``guest``. A user of its own named without a
  password from any of these is a :class:`~fleet.errors.ConfigError`.
- TLS: an ``https://`` API is verified against the broker URL's ``cafile``
  (else the system's CAs), not at all where the broker URL says
  ``no_verify_ssl=1``, and shown the broker URL's client certificate
  (``certfile``/``keyfile``) where it has one.

The credentials travel in a header, never in the URL, and the ``repr`` shows
the password as ``***``.
"""

from __future__ import annotations

import os
import ssl
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from fleet.errors import ConfigError
from fleet.redact import MASK, redact_url
from fleet.settings import MANAGEMENT, password_from_env

DEFAULT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}
"""Broker URL scheme -> the management API's default scheme and port."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ManagementApi:
    """The management API's base URL (no credentials in it) and its login."""

    base: str
    username: str
    password: str = field(repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    def __repr__(self) -> str:
        return f"ManagementApi(base={self.base!r}, username={self.username!r}, password={MASK!r})"

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header (HTTP basic) of every request."""
        token = b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS settings for an ``https://`` API with a CA file, a client
        certificate or no verification; ``None``: the library's default (the
        system's CAs). A file that cannot be read or used is a
        :class:`ConfigError`."""
        if not self.base.startswith("https://") or not (
            self.cafile or self.certfile or not self.verify
        ):
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            files = {"cafile": self.cafile, "certfile": self.certfile, "keyfile": self.keyfile}
            named = ", ".join(f"{k}={v}" for k, v in files.items() if v)
            raise ConfigError(f"management API TLS settings ({named}): {exc}") from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _default_url(broker_url: str) -> str:
    parts = urlsplit(broker_url)
    scheme, port = DEFAULT_PORTS.get(parts.scheme, DEFAULT_PORTS["amqp"])
    host = parts.hostname or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def management_api(
    broker_url: str, management_url: str | None = None, *, env: Mapping[str, str] | None = None
) -> ManagementApi:
    """The management API of the broker at ``broker_url`` (see the module's
    docstring for the order of the sources); a URL that is no ``http(s)://``
    URL is a :class:`ConfigError` that shows no password."""
    env = os.environ if env is None else env
    url = management_url or env.get(f"{MANAGEMENT}_URL") or _default_url(broker_url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"management URL {redact_url(url)!r} must be http(s)://host[:port]")
    broker = urlsplit(broker_url)
    username = unquote(parts.username or broker.username or "guest")
    password = _password(parts.password, username, broker.username, broker.password, env)
    base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
    query = dict(parse_qsl(broker.query))
    return ManagementApi(
        base=base,
        username=username,
        password=password,
        cafile=query.get("cafile"),
        certfile=query.get("certfile"),
        keyfile=query.get("keyfile"),
        verify=query.get("no_verify_ssl", "0") == "0",
    )


def _password(
    given: str | None,
    username: str,
    broker_user: str | None,
    broker_password: str | None,
    env: Mapping[str, str],
) -> str:
    if given is not None:
        return unquote(given)
    from_env = password_from_env(MANAGEMENT, env)
    if from_env is not None:
        return from_env
    if unquote(broker_user or "guest") != username:
        raise ConfigError(
            f"management API user {username!r} has no password: give it in the URL, "
            f"{MANAGEMENT}_PASSWORD or {MANAGEMENT}_PASSWORD_FILE"
        )
    return unquote(broker_password or "guest")


__all__ = ["DEFAULT_PORTS", "ManagementApi", "management_api"]
