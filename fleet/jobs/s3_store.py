"""``s3://bucket/prefix``: jobs in S3 (or a service with S3's API and its
conditional writes), for a fleet that would rather run no Redis.

One object per job, ``<prefix>/jobs/<id>``: the record in the object's user
metadata (``state``, ``model``, ``submitted``, ``updated``, ``attempts``,
``expires``) and, once final, the encoded reply frame as its body. A new job
is written only if no object has its key (``If-None-Match: *``); every
transition reads the object and writes it back only if its ETag is unchanged
(``If-Match``), reading again when another writer won: so a transition is
atomic and conditional on the job being open, and a result and its final
state are written together, as on Redis. S3 has had conditional writes since
2024.

Expiry: a record past its ``expires`` reads as none (and is deleted then). S3
deletes objects in whole days, so give the prefix a lifecycle rule that
expires ``jobs/`` a day or more after the longest TTL in use; the Terraform
module's payload bucket has one.

Each call is one or two requests to S3 (tens of ms): a job store, not a cache
(the result cache stays on Redis). AWS credentials and region come from the
usual places (the instance profile on EC2); ``AWS_ENDPOINT_URL_S3`` points it
at another S3 (moto in tests).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from fleet.aws import S3Bucket, S3Refused
from fleet.errors import ConfigError, Internal, Unavailable
from fleet.jobs import (
    DEFAULT_TTL_S,
    OPEN_STATES,
    JobRecord,
    JobState,
    ResultStore,
    ResultStoreSpec,
    check_job_id,
    now,
)

_LOST_RACE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_TRIES = 16
"""Transitions tried again after losing a race to another writer."""


class S3ResultStore(ResultStore):
    def __init__(self, url: str, *, client: Any = None) -> None:
        parts = urlsplit(url)
        if not parts.netloc or parts.query:
            raise ConfigError(f"result store {url!r}: use s3://bucket/prefix")
        self.url = url
        prefix = parts.path.strip("/")
        self._prefix = f"{prefix}/jobs/" if prefix else "jobs/"
        self._bucket = S3Bucket(parts.netloc, f"result store {url}", client=client)

    def _key(self, job_id: str) -> str:
        return self._prefix + check_job_id(job_id)

    async def connect(self) -> None:
        try:
            await self._bucket.call("check the bucket", "head_bucket", refused=_MISSING)
        except S3Refused:
            bucket = self._bucket.bucket
            raise ConfigError(f"result store {self.url}: no bucket {bucket!r}") from None

    async def _read(self, job_id: str) -> tuple[JobRecord, str, float] | None:
        """The job's live record, its object's ETag and when it expires;
        ``None`` if it has none."""
        try:
            got = await self._bucket.call(
                "read a job", "get_object", refused=_MISSING, Key=self._key(job_id)
            )
        except S3Refused:
            return None
        body: bytes = await asyncio.to_thread(got["Body"].read)
        meta = got.get("Metadata", {})
        record = JobRecord.from_fields(job_id, meta, body if body else None, self.url)
        try:
            expires = float(meta["expires"])
        except (KeyError, ValueError) as exc:
            raise Internal(f"result store {self.url}: job {job_id} is malformed: {exc}") from None
        if now() >= expires:
            await self.delete(job_id)
            return None
        return record, str(got["ETag"]), expires

    async def _write(self, record: JobRecord, expires: float, **condition: str) -> bool:
        """Write ``record`` on ``condition``; ``False`` if another write won."""
        meta = {**record.fields(), "expires": repr(expires)}
        try:
            await self._bucket.call(
                f"mark a job {record.state.value}",
                "put_object",
                refused=_LOST_RACE,
                Key=self._key(record.id),
                Body=record.result or b"",
                Metadata=meta,
                **condition,
            )
        except S3Refused:
            return False
        return True

    async def create(self, job_id: str, *, model: str, ttl: float = DEFAULT_TTL_S) -> None:
        record = JobRecord.new(job_id, model)
        if not await self._write(record, record.submitted_at + ttl, IfNoneMatch="*"):
            raise Internal(f"result store {self.url}: job {job_id} exists already")

    async def move(self, job_id: str, state: JobState, result: bytes | None = None) -> bool:
        for _ in range(_TRIES):
            found = await self._read(job_id)
            if found is None or found[0].state not in OPEN_STATES:
                return False
            record, etag, expires = found
            moved = record.moved(state, result)
            if await self._write(moved, expires, IfMatch=etag):
                return True
        raise Unavailable(f"result store {self.url}: job {job_id} kept changing under us")

    async def get(self, job_id: str) -> JobRecord | None:
        found = await self._read(job_id)
        return None if found is None else found[0]

    async def delete(self, job_id: str) -> None:
        await self._bucket.call("delete a job", "delete_object", Key=self._key(job_id))


SPEC = ResultStoreSpec(name="s3", schemes=("s3",), factory=S3ResultStore)

__all__ = ["SPEC", "S3ResultStore"]
