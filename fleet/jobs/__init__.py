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
and ``redis://`` / ``rediss://`` (Redis or Valkey; the password as in the
URL, else ``$FLEET_RESULTS_PASSWORD`` or the file ``$FLEET_RESULTS_PASSWORD_FILE``
names).
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from fleet.cache import ResultCache
from fleet.errors import ConfigError, InvalidArgument
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
    async def start(self, job_id: str) -> bool:
        """Mark an open job ``running``; ``False`` (do not run it) if it is
        final or has no record."""

    @abstractmethod
    async def finish(self, job_id: str, *, ok: bool, result: bytes) -> bool:
        """Store an open job's result as ``done`` (``ok``) or ``failed``, in
        one step; ``False`` if it was final already or has no record."""

    @abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Mark an open job ``cancelled``; ``False`` if it was final or unknown."""

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
]
