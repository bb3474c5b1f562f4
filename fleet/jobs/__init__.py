"""Jobs: requests answered into a result store instead of a caller's inbox.

A job is one request whose reply address is ``fleet.job.<32 hex>`` (its id):
the client records it in the result store (``queued``) and publishes it; a
worker marks it ``running`` when it takes it and writes the encoded reply
frame with the final state (``done`` or ``failed``) in one atomic step, so a
job is never ``done`` without its result. Anyone who knows the id and the
store reads its state and result later, from any process. A job that is
``cancelled`` before a worker finishes it is not written over (and a worker
that takes it after the cancel does not run it). Records expire after their
TTL; an id the store has no record of reads as :attr:`JobState.UNKNOWN`
(expired, or never submitted).

Delivery is the broker's: a worker killed while running a job leaves its
message to be delivered again, and the next worker runs it (``running``
again) and finishes it; a duplicate finish is ignored (the first result
stays).

Stores are a registry (``fleet.result_stores`` entry points), chosen by URL
scheme: ``memory://name`` (in this process, for tests and the embedded mode)
``redis://`` / ``rediss://`` (Redis or Valkey; the password as in the URL,
else ``$FLEET_RESULTS_PASSWORD`` or the file ``$FLEET_RESULTS_PASSWORD_FILE``
names) and ``s3://bucket/prefix`` (conditional writes; see
:mod:`fleet.jobs.s3_store`).

A job that the broker dead-letters (past its delivery limit) is stored as
``failed`` by a worker with a store, which reads the dead letters too
(:class:`~fleet.transport.DeadLetterTap`); a worker started with a notify
destination publishes a :class:`JobEvent` for every job it stores.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from fleet import wire
from fleet.cache import ResultCache
from fleet.contract import ErrorInfo, Reply
from fleet.errors import ConfigError, DecodeError, Internal, InvalidArgument, JobNotFound
from fleet.registry import Registry

JOB_PREFIX = "fleet.job."
_JOB_ADDRESS = re.compile(r"fleet\.job\.([0-9a-f]{32})")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_TTL_S = 24 * 3600.0
"""How long a job's record (and its result) is kept: a day."""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # no record: expired after its TTL, or never submitted

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


OPEN_STATES = (JobState.QUEUED, JobState.RUNNING)


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        shown = job_id[:80] if isinstance(job_id, str) else type(job_id).__name__
        raise InvalidArgument(f"job id {shown!r} is not 32 lowercase hex digits")
    return job_id


def job_address(job_id: str) -> str:
    """The reply address that sends a request's reply to the result store."""
    return JOB_PREFIX + check_job_id(job_id)


def job_id_of(address: str) -> str | None:
    """The job id a reply address names, or ``None`` if it is no job address."""
    found = _JOB_ADDRESS.fullmatch(address) if isinstance(address, str) else None
    return found[1] if found else None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRecord:
    """What the store holds of one job."""

    id: str
    state: JobState
    model: str = ""
    submitted_at: float = 0.0  # the client's wall clock
    updated_at: float = 0.0  # the wall clock of whoever changed it last
    attempts: int = 0  # times a worker took it (more than one: delivered again)
    result: bytes | None = None  # the encoded reply frame (fleet.wire), once final

    @classmethod
    def new(cls, job_id: str, model: str) -> JobRecord:
        """A job just submitted: ``queued``."""
        t = now()
        return cls(
            id=check_job_id(job_id),
            state=JobState.QUEUED,
            model=model,
            submitted_at=t,
            updated_at=t,
        )

    def moved(self, state: JobState, result: bytes | None = None) -> JobRecord:
        """This record after a transition to ``state`` (a start counts an attempt)."""
        return dataclasses.replace(
            self,
            state=state,
            updated_at=now(),
            attempts=self.attempts + (state is JobState.RUNNING),
            result=result,
        )

    def fields(self) -> dict[str, str]:
        """The record but its id and result, as text: how stores keep it."""
        return {
            "state": self.state.value,
            "model": self.model,
            "submitted": repr(self.submitted_at),
            "updated": repr(self.updated_at),
            "attempts": str(self.attempts),
        }

    @classmethod
    def from_fields(
        cls, job_id: str, fields: Mapping[str, str], result: bytes | None, where: str
    ) -> JobRecord:
        """The record :meth:`fields` wrote; :class:`~fleet.errors.Internal`
        naming ``where`` if it is malformed."""
        try:
            return cls(
                id=job_id,
                state=JobState(fields["state"]),
                model=fields.get("model", ""),
                submitted_at=float(fields.get("submitted", "0")),
                updated_at=float(fields.get("updated", "0")),
                attempts=int(fields.get("attempts", "0")),
                result=result,
            )
        except (KeyError, ValueError) as exc:
            raise Internal(f"result store {where}: job {job_id} is malformed: {exc}") from None


def reply_of(record: JobRecord) -> Reply:
    """The reply a final job's record holds: :class:`JobNotFound` if it has
    none, :class:`InvalidArgument` (or a decode error) if it holds no reply."""
    if record.result is None:
        raise JobNotFound(f"job {record.id} ({record.state}) has no result")
    frame = wire.decode_replies(record.result, wire.Limits(max_message_bytes=1 << 40))
    (reply,) = frame.items
    if not isinstance(reply, Reply):
        raise InvalidArgument(f"job {record.id}: its result holds no reply")
    return reply


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent:
    """The notification of one finished job (``done`` or ``failed``): a JSON
    object, published by the worker that stored the result to the destination
    it was started with (``--notify``). Delivery is at least once: a worker
    that stopped between storing a result and notifying leaves the request to
    be delivered again, and the next worker notifies; a consumer that must not
    act twice keeps the ids it has seen. The key (RabbitMQ routing key, Kafka
    record key) is ``<model>.<state>``, so a binding such as ``*.failed``
    takes the failures alone."""

    job: str
    model: str
    state: JobState
    version: str = ""
    error: ErrorInfo | None = None  # a failed job's typed error
    finished_at: float = 0.0  # the worker's wall clock

    @property
    def key(self) -> str:
        return f"{self.model}.{self.state.value}"

    def encode(self) -> bytes:
        error = None
        if self.error is not None:
            error = {
                "code": self.error.code,
                "type": type(self.error.to_exception()).__name__,
                "message": self.error.message,
                "retriable": self.error.retriable,
            }
        return json.dumps(
            {
                "job": self.job,
                "model": self.model,
                "version": self.version,
                "state": self.state.value,
                "error": error,
                "finished_at": self.finished_at,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> JobEvent:
        """The event in ``body``; :class:`~fleet.errors.DecodeError` if it is none."""
        try:
            raw = json.loads(body)
            error = raw["error"]
            return cls(
                job=check_job_id(raw["job"]),
                model=str(raw["model"]),
                state=JobState(raw["state"]),
                version=str(raw.get("version", "")),
                error=None
                if error is None
                else ErrorInfo(
                    code=int(error["code"]),
                    message=str(error["message"]),
                    retriable=bool(error.get("retriable", False)),
                ),
                finished_at=float(raw.get("finished_at", 0.0)),
            )
        except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
            raise DecodeError(f"not a job notification: {exc}") from None


class ResultStore(ABC):
    """Where jobs' states and results live. Every transition is atomic and
    conditional: only an open job (queued or running) moves."""

    url: str

    async def __aenter__(self) -> ResultStore:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:  # noqa: B027 (optional: a store in memory has none)
        """Check that the store answers (a typed error if not)."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""

    @abstractmethod
    async def create(self, job_id: str, *, model: str, ttl: float = DEFAULT_TTL_S) -> None:
        """Record a new job as ``queued``, kept for ``ttl`` seconds."""

    @abstractmethod
    async def move(self, job_id: str, state: JobState, result: bytes | None = None) -> bool:
        """Move an open job (queued or running) to ``state``, with ``result``
        when it is final, in one atomic step (a start counts an attempt);
        ``False`` if it was final already or has no record."""

    async def start(self, job_id: str) -> bool:
        """Mark an open job ``running``; ``False`` (do not run it) if it is
        final or has no record."""
        return await self.move(job_id, JobState.RUNNING)

    async def finish(self, job_id: str, *, ok: bool, result: bytes) -> bool:
        """Store an open job's result as ``done`` (``ok``) or ``failed``, in
        one step; ``False`` if it was final already or has no record."""
        return await self.move(job_id, JobState.DONE if ok else JobState.FAILED, bytes(result))

    async def cancel(self, job_id: str) -> bool:
        """Mark an open job ``cancelled``; ``False`` if it was final or unknown."""
        return await self.move(job_id, JobState.CANCELLED)

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` when there is none."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget a job (its result included)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultStoreSpec:
    """One kind of result store: its name, its URL schemes, its factory, and
    the factory of the result cache (:mod:`fleet.cache`) on the same service."""

    name: str
    schemes: tuple[str, ...]
    factory: Callable[[str], ResultStore]
    cache_factory: Callable[[str], ResultCache] | None = None


RESULT_STORES: Registry[ResultStoreSpec] = Registry(
    "fleet.result_stores", "result store", ResultStoreSpec, names_of=lambda spec: spec.schemes
)


def open_store(url: str) -> ResultStore:
    """The result store at ``url`` (not yet connected: ``async with``)."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if "://" not in url or scheme not in RESULT_STORES:
        known = ", ".join(f"{s}://" for s in RESULT_STORES.names())
        raise ConfigError(f"result store URL scheme {scheme!r} is not known; known: {known}")
    return RESULT_STORES.get(scheme).factory(url)


def open_cache(url: str) -> ResultCache:
    """The result cache at ``url``: ``memory://NAME``, ``redis://``, ``rediss://``."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    spec = RESULT_STORES.get(scheme) if "://" in url and scheme in RESULT_STORES else None
    if spec is None or spec.cache_factory is None:
        raise ConfigError(f"cache URL scheme {scheme!r} is not known; use memory:// or redis://")
    return spec.cache_factory(url)


def now() -> float:
    return time.time()


__all__ = [
    "DEFAULT_TTL_S",
    "JOB_PREFIX",
    "OPEN_STATES",
    "RESULT_STORES",
    "JobEvent",
    "JobRecord",
    "JobState",
    "ResultStore",
    "ResultStoreSpec",
    "check_job_id",
    "job_address",
    "job_id_of",
    "new_job_id",
    "open_cache",
    "open_store",
    "reply_of",
]
