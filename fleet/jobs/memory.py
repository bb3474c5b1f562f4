"""``memory://name``: a result store in this process (tests, the embedded mode).

Stores of the same name share their records, as processes sharing a Redis
would; :meth:`MemoryResultStore.reset` forgets a name's records.
"""

from __future__ import annotations

import time
from typing import ClassVar

from fleet.cache import MemoryCache
from fleet.jobs import (
    DEFAULT_TTL_S,
    OPEN_STATES,
    JobRecord,
    JobState,
    ResultStore,
    ResultStoreSpec,
    check_job_id,
)


class MemoryResultStore(ResultStore):
    _shared: ClassVar[dict[str, dict[str, tuple[JobRecord, float]]]] = {}

    def __init__(self, url: str) -> None:
        self.url = url
        self._records = self._shared.setdefault(url.removeprefix("memory://"), {})

    @classmethod
    def reset(cls, name: str) -> None:
        cls._shared.pop(name, None)

    def _live(self, job_id: str) -> JobRecord | None:
        entry = self._records.get(check_job_id(job_id))
        if entry is None:
            return None
        record, expires = entry
        if time.monotonic() >= expires:
            del self._records[job_id]
            return None
        return record

    async def move(self, job_id: str, state: JobState, result: bytes | None = None) -> bool:
        """As the Redis store's script: only an open job moves; a start counts."""
        record = self._live(job_id)
        if record is None or record.state not in OPEN_STATES:
            return False
        _, expires = self._records[job_id]
        self._records[job_id] = (record.moved(state, result), expires)
        return True

    async def create(self, job_id: str, *, model: str, ttl: float = DEFAULT_TTL_S) -> None:
        record = JobRecord.new(job_id, model)
        self._records[record.id] = (record, time.monotonic() + ttl)

    async def get(self, job_id: str) -> JobRecord | None:
        return self._live(job_id)

    async def delete(self, job_id: str) -> None:
        self._records.pop(check_job_id(job_id), None)


SPEC = ResultStoreSpec(
    name="memory", schemes=("memory",), factory=MemoryResultStore, cache_factory=MemoryCache
)
