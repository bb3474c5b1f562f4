"""The request and reply envelopes every part of the fleet speaks.

The encoding lives in :mod:`fleet.wire`; this module is only the data.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from fleet.errors import FleetError, InvalidArgument, error_from_code
from fleet.tensor import Tensor

ParamValue = bool | int | float | str

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Priority(enum.IntEnum):
    """Priority class. ``online`` is always served before ``batch``."""

    ONLINE = 0
    BATCH = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise InvalidArgument(
                    f"priority must be 'online' or 'batch', not {value!r}"
                ) from None
        return cls(value)


def check_model_name(name: str) -> str:
    """Model names become queue and topic names, so they are restricted."""
    if not MODEL_NAME.match(name):
        raise InvalidArgument(
            f"model name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return name


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One inference request. ``id`` is made by the client and is the idempotency key."""

    id: str
    model: str
    version: str | None = None
    inputs: tuple[Tensor, ...]
    deadline: float  # absolute, seconds since the epoch
    priority: Priority = Priority.ONLINE
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    sent_at: float = 0.0  # when the client published it, seconds since the epoch

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.deadline


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorInfo:
    code: int
    message: str
    retriable: bool

    @classmethod
    def of(cls, exc: FleetError) -> ErrorInfo:
        return cls(code=int(exc.code), message=exc.message, retriable=exc.retriable)

    def to_exception(self) -> FleetError:
        return error_from_code(self.code, self.message, self.retriable)


@dataclass(frozen=True, kw_only=True, slots=True)
class Timings:
    queue_ms: float = 0.0  # from the client's publish to the start of inference
    inference_ms: float = 0.0  # the batch's model run
    batch_size: int = 0
    worker_id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """The answer to one request: outputs or a typed error, never both."""

    id: str
    model: str
    version: str = ""
    outputs: tuple[Tensor, ...] = ()
    error: ErrorInfo | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def ok(self) -> bool:
        return self.error is None

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The outputs as numpy arrays, or the reply's typed error raised."""
        if self.error is not None:
            raise self.error.to_exception()
        return {t.name: t.to_numpy() for t in self.outputs}


@dataclass(frozen=True, kw_only=True, slots=True)
class ItemError:
    """An item of a message that could not be decoded; ``id`` is "" when unknown."""

    id: str
    error: FleetError


__all__ = [
    "ErrorInfo",
    "ItemError",
    "ParamValue",
    "Priority",
    "Reply",
    "Request",
    "Timings",
    "check_model_name",
    "new_request_id",
]
