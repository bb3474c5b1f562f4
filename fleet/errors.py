"""One exception root for everything the fleet raises on purpose.

::

    FleetError                      code            retriable
    ├── InvalidArgument             INVALID_ARGUMENT  no
    │   └── DecodeError             INVALID_ARGUMENT  no   (bytes that are not a valid message)
    │       ├── UnsupportedVersion  INVALID_ARGUMENT  no
    │       └── LimitExceeded       INVALID_ARGUMENT  no   (size, rank, element count)
    ├── ModelNotFound               NOT_FOUND         no
    ├── DeadlineExceeded            DEADLINE_EXCEEDED no
    ├── Overloaded                  OVERLOADED        yes  (queue full: back off and retry)
    ├── Unavailable                 UNAVAILABLE       yes  (broker or worker unreachable)
    ├── Internal                    INTERNAL          no
    └── ConfigError                 CONFIG            no   (bad settings or model config)
        └── AuthenticationFailed    CONFIG            no   (credentials or certificate refused)

Every error has a stable ``code`` (what travels on the wire in a reply) and a
``retriable`` flag. Library errors (aio-pika, aiokafka, onnxruntime, boto3) are
translated at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.IntEnum):
    """Error codes as they travel in a reply. Values are part of the wire format."""

    INTERNAL = 1
    INVALID_ARGUMENT = 2
    NOT_FOUND = 3
    DEADLINE_EXCEEDED = 4
    OVERLOADED = 5
    UNAVAILABLE = 6
    CONFIG = 7


class FleetError(Exception):
    """Root of every error the fleet raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retriable = self.default_retriable if retriable is None else retriable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, retriable={self.retriable})"


class InvalidArgument(FleetError):
    """The request is malformed: wrong dtype, wrong shape, unknown input name."""

    code = ErrorCode.INVALID_ARGUMENT


class DecodeError(InvalidArgument):
    """Bytes that are not a valid fleet message."""


class UnsupportedVersion(DecodeError):
    """A message in a schema version this build does not speak."""


class LimitExceeded(DecodeError):
    """A message over a configured limit (size, rank, element count, items)."""


class ModelNotFound(FleetError):
    """No worker serves this model (or this version of it)."""

    code = ErrorCode.NOT_FOUND


class DeadlineExceeded(FleetError):
    """The request's deadline passed before it was answered."""

    code = ErrorCode.DEADLINE_EXCEEDED


class Overloaded(FleetError):
    """The model's queue is full; back off and retry."""

    code = ErrorCode.OVERLOADED
    default_retriable = True


class Unavailable(FleetError):
    """The broker or the workers cannot be reached right now."""

    code = ErrorCode.UNAVAILABLE
    default_retriable = True


class Internal(FleetError):
    """A failure inside the fleet (a model that raised, a bug)."""

    code = ErrorCode.INTERNAL


class ConfigError(FleetError):
    """Bad settings or a bad model configuration."""

    code = ErrorCode.CONFIG


class AuthenticationFailed(ConfigError):
    """The broker refused the credentials, or one side refused the other's
    certificate (an untrusted CA, a name that does not match). Retrying with the
    same settings cannot succeed, so it is raised at connect, not retried."""


class NotAuthorized(ConfigError):
    """The broker knows the user but its ACLs (or IAM policy) do not grant what
    was asked: a topic, a group or a cluster right. Retrying cannot succeed
    until an operator grants it, so it is raised, not retried."""


class JobNotFound(FleetError):
    """The result store holds no record of the job: its TTL passed, or it was
    never submitted (to this store)."""

    code = ErrorCode.NOT_FOUND


class JobCancelled(FleetError):
    """The job was cancelled before a worker finished it; it has no result."""

    code = ErrorCode.INVALID_ARGUMENT


_BY_CODE: dict[ErrorCode, type[FleetError]] = {
    ErrorCode.INTERNAL: Internal,
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.NOT_FOUND: ModelNotFound,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.CONFIG: ConfigError,
}


def error_from_code(code: int, message: str, retriable: bool) -> FleetError:
    """Rebuild the typed error a reply carries. Unknown codes become ``Internal``."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except ValueError:
        cls = Internal
        message = f"[unknown error code {code}] {message}"
    return cls(message, retriable=retriable)


__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "DeadlineExceeded",
    "DecodeError",
    "ErrorCode",
    "FleetError",
    "Internal",
    "InvalidArgument",
    "JobCancelled",
    "JobNotFound",
    "LimitExceeded",
    "ModelNotFound",
    "NotAuthorized",
    "Overloaded",
    "Unavailable",
    "UnsupportedVersion",
    "error_from_code",
]
