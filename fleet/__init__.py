"""fleet: the shared kernel of the inference fleet.

The wire contract (:mod:`fleet.contract`, :mod:`fleet.wire`, :mod:`fleet.tensor`),
the error tree (:mod:`fleet.errors`), the transports (:mod:`fleet.transport`),
heartbeats, settings, logging and the ``fleet`` command line.
"""

from fleet.contract import ErrorInfo, ItemError, Priority, Reply, Request, Timings
from fleet.errors import (
    ConfigError,
    DeadlineExceeded,
    DecodeError,
    ErrorCode,
    FleetError,
    Internal,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    Overloaded,
    Unavailable,
    UnsupportedVersion,
)
from fleet.tensor import DataType, Tensor

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataType",
    "DeadlineExceeded",
    "DecodeError",
    "ErrorCode",
    "ErrorInfo",
    "FleetError",
    "Internal",
    "InvalidArgument",
    "ItemError",
    "LimitExceeded",
    "ModelNotFound",
    "Overloaded",
    "Priority",
    "Reply",
    "Request",
    "Tensor",
    "Timings",
    "Unavailable",
    "UnsupportedVersion",
    "__version__",
]
