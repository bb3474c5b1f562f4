"""Secrets out of sight: what the fleet prints, logs, writes or puts in an
error shows a URL's password as ``***``.

A broker URL carries its password (``amqp://fleet:s3cret@mq:5672/``); every
``repr``, log line and error message that shows a URL shows it through
:func:`redact_url` (``amqp://fleet:***@mq:5672/``). A query parameter whose
name says it holds a secret (``password``, ``secret``, ``token``) is masked
too, and so is a URL given as a query value (``?management_url=``).
:func:`strip_password` takes the password out altogether, for a file that
names the broker but must not hold its secret.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEY = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _netloc(netloc: str, password: str | None) -> str:
    """``netloc`` whose password (if it has one) is ``password``, or gone for ``None``."""
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return netloc
    user = userinfo.partition(":")[0]
    return f"{user}@{host}" if password is None else f"{user}:{password}@{host}"


def _rewrite(url: str, password: str | None) -> str:
    """``url`` with its password replaced (``None``: removed), every secret
    query value masked and every URL in a query value rewritten alike. The
    query is re-encoded only when something in it changed."""
    parts = urlsplit(url)
    netloc = _netloc(parts.netloc, password)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        changed = [(k, _query_value(k, v, password)) for k, v in pairs]
        if changed != pairs:
            query = urlencode(changed, safe="*:/@")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _query_value(key: str, value: str, password: str | None) -> str:
    if _SECRET_KEY.search(key):
        return MASK
    if "://" in value:
        return _rewrite(value, password)
    return value


def redact_url(url: str) -> str:
    """``url`` with its password, any secret query value and any URL in a query
    value redacted: ``amqp://guest:***@host:5672/``. A URL without a password
    comes back as it is; text that is no URL too."""
    if "://" not in url:
        return url
    try:
        return _rewrite(url, MASK)
    except ValueError:  # not parseable as a URL (e.g. a bad port): mask what may be a secret
        return _URL_IN_TEXT.sub(lambda m: _mask_userinfo(m.group(0)), url)


def _mask_userinfo(url: str) -> str:
    head, sep, rest = url.partition("://")
    userinfo, at, tail = rest.partition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.partition(':')[0]}:{MASK}@{tail}"


def redact_text(text: str) -> str:
    """``text`` (an error message, a log value) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def strip_password(url: str) -> str:
    """``url`` without its password (the user stays): ``amqp://guest@host/``.
    Secret query values are masked, since no reader could use them."""
    return _rewrite(url, None)


def url_password(url: str) -> str | None:
    """The password in ``url`` (percent-decoded), or ``None``."""
    password = urlsplit(url).password
    return None if password is None else unquote(password)


def insert_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password (percent-encoded); the URL
    must name a user."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or not userinfo:
        raise ValueError("the URL names no user to go with a password")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def dataclass_repr(obj: Any) -> str:
    """``Name(field=value, ...)`` of a dataclass instance, every URL in a
    string field redacted: the ``__repr__`` of a dataclass that holds one."""
    fields = ", ".join(
        f"{f.name}={_redacted(getattr(obj, f.name))!r}" for f in dataclasses.fields(obj) if f.repr
    )
    return f"{type(obj).__name__}({fields})"


def _redacted(value: object) -> object:
    return redact_url(value) if isinstance(value, str) else value


__all__ = [
    "MASK",
    "dataclass_repr",
    "insert_password",
    "redact_text",
    "redact_url",
    "strip_password",
    "url_password",
]
