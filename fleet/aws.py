"""AWS calls: one retry policy, botocore's own, and one reading of AWS errors.

Every AWS client of the fleet (the ``ec2`` actuator's Auto Scaling client, the
worker's lifecycle-hook client) is built with :func:`client_config`: botocore
retries throttling, transient errors (HTTP 500/502/503/504, request
timeouts) and connection failures itself, in its ``standard`` (or
``adaptive``) mode, with exponential backoff and full jitter, up to
``max_attempts`` attempts in all. What is left when it gives up is read here:

- :func:`error_code` gives an AWS error's code and message;
- :func:`is_transient` says whether botocore's retry policy counts it as
  throttling or transient (then it is ``Unavailable``: a later call may work);
- :data:`ACCESS_DENIED_CODES` and :data:`CREDENTIALS_CODES` are the refusals
  that retrying cannot fix (a configuration problem);
- :func:`on_retry` calls back on every retried attempt, for logs and counters.

botocore is imported inside the functions, so importing this module costs
nothing where AWS is not used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fleet.errors import ConfigError, FleetError, Unavailable

if TYPE_CHECKING:
    from botocore.config import Config

RetryMode = Literal["standard", "adaptive"]
RETRY_MODES: tuple[RetryMode, ...] = ("standard", "adaptive")
DEFAULT_MAX_ATTEMPTS = 6

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
    }
)
"""The caller is not allowed to do this: a missing IAM permission."""

CREDENTIALS_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
"""The credentials themselves were refused."""

_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


def client_config(
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    mode: RetryMode = "standard",
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> Config:
    """The botocore ``Config`` every fleet AWS client is built with: botocore's
    ``mode`` retries, ``max_attempts`` attempts in all (the first included)."""
    from botocore.config import Config

    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if mode not in RETRY_MODES:
        raise ValueError(f"retry mode must be one of {', '.join(RETRY_MODES)}, got {mode!r}")
    config = Config(retries={"mode": mode, "total_max_attempts": max_attempts})
    if connect_timeout is not None:
        config = config.merge(Config(connect_timeout=connect_timeout))
    if read_timeout is not None:
        config = config.merge(Config(read_timeout=read_timeout))
    return config


class _Events(Protocol):
    def register(self, event_name: str, handler: Callable[..., Any]) -> None: ...


class _Meta(Protocol):
    @property
    def events(self) -> Any: ...


class AwsClient(Protocol):
    """What :func:`on_retry` needs of a boto3 client."""

    @property
    def meta(self) -> _Meta: ...


def on_retry(client: AwsClient, callback: Callable[[str, int], None]) -> None:
    """Call ``callback(operation, attempt)`` each time ``client`` sends an
    attempt after the first (``attempt`` counts from 1)."""

    def created(request: Any, event_name: str = "", **_kwargs: Any) -> None:
        attempt = int((request.context.get("retries") or {}).get("attempt", 1))
        if attempt > 1:
            callback(event_name.rpartition(".")[2], attempt)

    events: _Events = client.meta.events
    events.register("request-created", created)


def error_code(exc: Exception) -> tuple[str, str]:
    """``(code, message)`` of an AWS error response; ``("", str(exc))`` for
    anything else."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return "", str(exc)
    err = exc.response.get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", "")) or str(exc)


def is_transient(exc: Exception) -> bool:
    """Whether botocore's retry policy counts ``exc`` as throttling or a
    transient failure (so a later call may succeed)."""
    from botocore.exceptions import ClientError
    from botocore.retries.standard import (
        RetryContext,
        ThrottledRetryableChecker,
        TransientRetryableChecker,
    )

    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if status in _TRANSIENT_STATUS:
            return True
        context = RetryContext(attempt_number=1, parsed_response=dict(exc.response))
    else:
        context = RetryContext(attempt_number=1, caught_exception=exc)
    return bool(
        ThrottledRetryableChecker().is_retryable(context)
        or TransientRetryableChecker().is_retryable(context)
    )


def s3_client(*, max_attempts: int = DEFAULT_MAX_ATTEMPTS, region: str | None = None) -> Any:
    """A boto3 S3 client with the fleet's retry policy. Credentials, region and
    endpoint come from the environment as for any boto3 client (``AWS_PROFILE``,
    ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``...).
    ``ImportError`` without boto3 (the ``aws`` extra)."""
    import boto3

    return boto3.client("s3", region_name=region, config=client_config(max_attempts=max_attempts))


class S3Refused(Exception):
    """An S3 error code the caller asked to read itself (:class:`S3Bucket`)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class S3Bucket:
    """One bucket, its client made on first use (:func:`s3_client`), and its
    calls run in a thread with AWS errors typed: transient ones
    :class:`~fleet.errors.Unavailable`, the rest
    :class:`~fleet.errors.ConfigError` naming ``where`` and what was done, but
    for the codes the caller reads itself (:class:`S3Refused`)."""

    def __init__(self, bucket: str, where: str, *, client: Any = None) -> None:
        self.bucket, self.where = bucket, where
        self._client = client

    @property
    def s3(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    async def call(
        self, what: str, name: str, *, refused: frozenset[str] = frozenset(), **kwargs: Any
    ) -> Any:
        """``client.<name>(Bucket=..., **kwargs)``."""
        try:
            return await asyncio.to_thread(getattr(self.s3, name), Bucket=self.bucket, **kwargs)
        except FleetError:
            raise
        except Exception as exc:
            code, message = error_code(exc)
            if code in refused:
                raise S3Refused(code) from None
            if not code or is_transient(exc):
                raise Unavailable(f"{self.where}: {what}: {message}") from None
            raise ConfigError(f"{self.where}: {what}: {code}: {message}") from None


__all__ = [
    "ACCESS_DENIED_CODES",
    "CREDENTIALS_CODES",
    "DEFAULT_MAX_ATTEMPTS",
    "RETRY_MODES",
    "AwsClient",
    "RetryMode",
    "S3Bucket",
    "S3Refused",
    "client_config",
    "error_code",
    "is_transient",
    "on_retry",
    "s3_client",
]
