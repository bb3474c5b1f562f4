"""The request and reply envelopes every part of the fleet speaks.

The encoding lives in :mod:`fleet.wire`; this module is only the data.

Deadlines and clocks: a request carries its ``deadline`` (absolute, on the
client's wall clock) and its ``timeout``, the seconds of budget it had left
when it was published. The decoder stamps ``arrived`` with the decoding
host's :func:`time.monotonic`, and :meth:`Request.expired` judges the budget
on that host's own monotonic clock: a request expires ``timeout`` seconds
after it arrived, whatever the two wall clocks say. The wall clock is trusted
only beyond :data:`CLOCK_SKEW_TOLERANCE_S`: a request also expires once the
local wall clock is more than that past its deadline. So:

* a worker whose clock is *ahead* of the client's by S seconds drops nothing
  early as long as S < ``CLOCK_SKEW_TOLERANCE_S`` (ahead by more, it drops
  requests whose budget plus the tolerance is under S plus their time in the
  broker queue);
* a worker whose clock is *behind* by any amount still expires every request
  ``timeout`` seconds after its arrival;
* time spent in the broker queue is counted only through the wall clocks, at
  that tolerance: a request that waited in the queue longer than its budget
  plus ``CLOCK_SKEW_TOLERANCE_S`` (plus any skew) is dropped; one that waited
  less is given its whole remaining budget from its arrival (its caller may
  have given up meanwhile: the reply is then dropped quietly by the client);
* a NaN deadline or budget counts as expired, never as "never expires".

A request without a ``timeout`` or an ``arrived`` stamp (frame version 1, or
made locally) is judged on the wall clock alone, as before.
"""

from __future__ import annotations

import enum
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from fleet.errors import FleetError, InvalidArgument, error_from_code
from fleet.fastinit import positional
from fleet.tensor import Tensor

ParamValue = bool | int | float | str

CLOCK_SKEW_TOLERANCE_S = 30.0
"""How far past its wall-clock deadline a request with a budget must be (on
the judging host's wall clock) before the wall clock alone expires it."""

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
        try:
            return cls(value)
        except (ValueError, TypeError):
            raise InvalidArgument(
                f"priority must be 0 (online) or 1 (batch), not {value!r}"
            ) from None


def check_model_name(name: str) -> str:
    """Model names become queue and topic names, so they are restricted."""
    if not MODEL_NAME.match(name):
        raise InvalidArgument(
            f"model name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'"
        )
    return name


_IDS: list[str] = []  # drawn ahead, 256 at a time
os.register_at_fork(after_in_child=_IDS.clear)  # a forked child draws its own


def new_request_id() -> str:
    """128 random bits from the OS as 32 hex digits (a uuid4's length). Drawn
    256 at a time: one system call each, which also releases the GIL, costs
    more than the rest of a request's bookkeeping where other threads run."""
    try:
        return _IDS.pop()
    except IndexError:
        blob = os.urandom(16 * 256).hex()
        _IDS.extend(blob[i : i + 32] for i in range(0, len(blob), 32))
        return _IDS.pop()


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One inference request. ``id`` is made by the client and is the idempotency key."""

    id: str
    model: str
    version: str | None = None
    inputs: tuple[Tensor, ...]
    deadline: float  # absolute, seconds since the epoch on the client's clock
    priority: Priority = Priority.ONLINE
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    sent_at: float = 0.0  # when the client made it, seconds since the epoch (its clock)
    timeout: float | None = None  # seconds of budget left when published
    arrived: float | None = field(default=None, compare=False)  # local time.monotonic()
    headers: Mapping[str, str] = field(default_factory=dict)  # W3C trace context and the like

    def expired(self, now: float | None = None, *, monotonic: float | None = None) -> bool:
        """Whether the deadline passed: ``now`` is the local wall clock
        (default :func:`time.time`), ``monotonic`` the local monotonic clock
        (default :func:`time.monotonic`). See the module docstring."""
        wall = time.time() if now is None else now
        if self.timeout is None or self.arrived is None:
            return not wall < self.deadline  # NaN: expired
        if not wall < self.deadline + CLOCK_SKEW_TOLERANCE_S:
            return True
        mono = time.monotonic() if monotonic is None else monotonic
        return not mono < self.arrived + self.timeout

    def waited(self, now: float | None = None, *, monotonic: float | None = None) -> float:
        """Seconds since the request arrived, on the local monotonic clock;
        for a request without an ``arrived`` stamp, since ``sent_at`` on the
        wall clock. Never negative, never NaN."""
        if self.arrived is not None:
            mono = time.monotonic() if monotonic is None else monotonic
            elapsed = mono - self.arrived
        else:
            elapsed = (time.time() if now is None else now) - self.sent_at
        return elapsed if math.isfinite(elapsed) and elapsed > 0 else 0.0


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
    queue_ms: float = 0.0  # from arrival at the worker to the start of inference
    inference_ms: float = 0.0  # the batch's model run
    batch_size: int = 0
    worker_id: str = ""
    received_at: float = 0.0  # worker's wall clock when the request arrived (0: not sent)
    replied_at: float = 0.0  # worker's wall clock when its reply was encoded (0: not sent)


@dataclass(frozen=True, slots=True)
class Stages:
    """Where one request's time went, in milliseconds (see :mod:`fleet.stages`).

    ``publish`` overlaps the stages after it; the others follow each other.
    Stages a reply cannot tell (an error reply made before its batch ran,
    or a reply from a worker that does not send stage times) are 0."""

    coalesce_ms: float = 0.0
    publish_ms: float = 0.0
    request_broker_ms: float = 0.0
    batch_wait_ms: float = 0.0
    inference_ms: float = 0.0
    reply_ms: float = 0.0
    reply_broker_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Reply:
    """The answer to one request: outputs or a typed error, never both."""

    id: str
    model: str
    version: str = ""
    outputs: tuple[Tensor, ...] = ()
    error: ErrorInfo | None = None
    timings: Timings = field(default_factory=Timings)
    stages: Stages | None = field(default=None, compare=False)  # filled in by the client

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


# Fast constructors (fleet.fastinit) for the paths that make one or more per
# request: every field, in declaration order, already checked.
make_request = positional(Request)
"""``make_request(id, model, version, inputs, deadline, priority, parameters,
sent_at, timeout, arrived, headers)``."""
make_reply = positional(Reply)
"""``make_reply(id, model, version, outputs, error, timings, stages)``."""
make_timings = positional(Timings)
"""``make_timings(queue_ms, inference_ms, batch_size, worker_id, received_at, replied_at)``."""
make_stages = positional(Stages)
"""``make_stages(coalesce_ms, publish_ms, request_broker_ms, batch_wait_ms, inference_ms,
reply_ms, reply_broker_ms, decode_ms, total_ms)``."""


def with_stages(reply: Reply, stages: Stages) -> Reply:
    """``reply`` with its :attr:`Reply.stages` set: what ``dataclasses.replace``
    makes, without its walk over the fields and the checked ``__init__``."""
    return make_reply(
        reply.id, reply.model, reply.version, reply.outputs, reply.error, reply.timings, stages
    )


__all__ = [
    "CLOCK_SKEW_TOLERANCE_S",
    "ErrorInfo",
    "ItemError",
    "ParamValue",
    "Priority",
    "Reply",
    "Request",
    "Stages",
    "Timings",
    "check_model_name",
    "make_reply",
    "make_request",
    "make_stages",
    "make_timings",
    "new_request_id",
    "with_stages",
]
