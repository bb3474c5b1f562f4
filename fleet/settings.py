"""Secrets for the settings of every fleet process: from the environment or a
file, never from the command line, and never shown.

A URL in a configuration file or on a command line names the user and leaves
the password out (``amqp://fleet@mq:5672/``); the password comes from
``$<NAME>_PASSWORD``, or from the file ``$<NAME>_PASSWORD_FILE`` names (a
mounted secret, e.g. ``/run/secrets/broker-password``; a trailing newline is
ignored). :func:`resolve_password` puts it in: ``NAME`` is ``FLEET_BROKER``
for the broker and ``FLEET_MANAGEMENT`` for RabbitMQ's management API.

:class:`RedactedRepr` is the base of every settings model that holds a URL:
its ``repr``/``str`` show passwords as ``***``, and its validation errors do
not echo the input (pydantic's ``input_value`` would show the URL whole).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

from fleet.errors import ConfigError
from fleet.redact import insert_password, redact_url, url_password

BROKER = "FLEET_BROKER"
"""Prefix of the broker's password variables: ``FLEET_BROKER_PASSWORD`` and
``FLEET_BROKER_PASSWORD_FILE``."""
MANAGEMENT = "FLEET_MANAGEMENT"
"""Prefix of the RabbitMQ management API's variables: ``FLEET_MANAGEMENT_URL``,
``FLEET_MANAGEMENT_PASSWORD`` and ``FLEET_MANAGEMENT_PASSWORD_FILE``."""


def read_secret(path: str | Path, *, what: str) -> str:
    """The secret in the file ``path``, without its trailing newline."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{what}: {path} is empty")
    return secret


def password_from_env(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """``$<name>_PASSWORD``, else the contents of the file ``$<name>_PASSWORD_FILE``
    names, else ``None``. Setting both is a :class:`ConfigError`."""
    env = os.environ if env is None else env
    value, file = env.get(f"{name}_PASSWORD"), env.get(f"{name}_PASSWORD_FILE")
    if value and file:
        raise ConfigError(f"set {name}_PASSWORD or {name}_PASSWORD_FILE, not both")
    if file:
        return read_secret(file, what=f"{name}_PASSWORD_FILE")
    return value or None


def resolve_password(
    url: str,
    name: str,
    *,
    password_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    default_user: str | None = None,
) -> str:
    """``url`` with its password: the one it carries, else the contents of
    ``password_file``, else ``$<name>_PASSWORD`` / ``$<name>_PASSWORD_FILE``.
    A URL that names no user takes none, unless ``default_user`` names the
    user a password alone logs in as (Redis's ``default``): then a password
    found is put in for that user. A password both in the URL and from a
    file is a :class:`ConfigError` (which one would be meant?)."""
    given = url_password(url)
    parts = urlsplit(url)
    if given is None and not parts.username:
        if default_user is None:
            return url  # nobody to log in as: no secret is read
        host = parts.netloc.rpartition("@")[2]
        named = urlunsplit(parts._replace(netloc=f"{default_user}@{host}"))
        resolved = resolve_password(named, name, password_file=password_file, env=env)
        return resolved if url_password(resolved) is not None else url
    if password_file is not None:
        if given is not None:
            raise ConfigError(f"{redact_url(url)} carries a password and a password file is set")
        secret: str | None = read_secret(password_file, what="password file")
    elif given is not None:
        return url
    else:
        secret = password_from_env(name, env)
    return url if secret is None else insert_password(url, secret)


class RedactedRepr(BaseModel):
    """A pydantic model whose ``repr``/``str`` show any URL field's password as
    ``***``, and whose validation errors leave the input out. Listed first
    among the bases: ``class WorkerSettings(RedactedRepr, BaseSettings)``."""

    model_config = ConfigDict(hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) else value


__all__ = [
    "BROKER",
    "MANAGEMENT",
    "RedactedRepr",
    "password_from_env",
    "read_secret",
    "resolve_password",
]
