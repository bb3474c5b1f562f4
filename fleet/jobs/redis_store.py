"""``redis://`` / ``rediss://``: jobs in Redis or Valkey.

One hash per job, ``fleet:job:<id>``, with the fields ``state``, ``model``,
``submitted``, ``updated``, ``attempts`` and, once final, ``result`` (the
encoded reply frame); it expires with the job's TTL. Every transition is a
Lua script, so it is atomic and conditional on the job being open: a result
and its final state are written together, and a cancelled or finished job is
never written over. ``rediss://`` takes ``?ssl_ca_certs=`` and the other
options of redis-py's URL form.

The password: the URL's, else ``$FLEET_RESULTS_PASSWORD`` or the contents
of the file ``$FLEET_RESULTS_PASSWORD_FILE`` names, for the user the URL
names (``redis://fleet@host/``) or, where it names none, Redis's ``default``
user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx

from fleet.cache import DEFAULT_CACHE_TTL_S, ResultCache
from fleet.errors import AuthenticationFailed, Internal, Unavailable
from fleet.jobs import (
    DEFAULT_TTL_S,
    JobRecord,
    JobState,
    ResultStore,
    ResultStoreSpec,
    check_job_id,
    now,
)
from fleet.redact import redact_url
from fleet.settings import resolve_password

RESULTS = "FLEET_RESULTS"
"""Prefix of the result store's password variables."""

_MOVE = """
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'queued' and s ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated', ARGV[2])
if ARGV[1] == 'running' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if ARGV[3] ~= nil then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
return 1
"""


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _key(job_id: str) -> str:
    return f"fleet:job:{check_job_id(job_id)}"


MAX_CONNECTIONS = 32
"""Connections to Redis per store or cache: more calls at once wait their turn."""


def _client(url: str, timeout: float) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        with_password(url),
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,  # the wait for a free connection
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


@asynccontextmanager
async def _typed(url: str, what: str) -> AsyncIterator[None]:
    """Redis errors as the fleet's typed errors."""
    try:
        yield
    except rx.AuthenticationError as exc:
        refused = f"result store {url} refused the login: {exc}"
        raise AuthenticationFailed(refused) from None
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        raise Unavailable(f"result store {url}: {what}: {exc}") from None
    except rx.RedisError as exc:
        raise Internal(f"result store {url}: {what}: {exc}") from None


class _Redis:
    """A Redis connection pool, its errors typed; what the store and the cache share."""

    url: str

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = redact_url(url)
        self._redis = _client(url, timeout)

    def _typed(self, what: str) -> AbstractAsyncContextManager[None]:
        return _typed(self.url, what)

    async def connect(self) -> None:
        async with self._typed("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


class RedisResultStore(_Redis, ResultStore):
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        super().__init__(url, timeout=timeout)
        self._move_script = self._redis.register_script(_MOVE)

    async def create(self, job_id: str, *, model: str, ttl: float = DEFAULT_TTL_S) -> None:
        record = JobRecord.new(job_id, model)
        async with self._typed("record a job"), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_key(job_id))
            pipe.hset(_key(job_id), mapping=record.fields())  # type: ignore[arg-type]
            pipe.pexpire(_key(job_id), max(1, int(ttl * 1000)))
            await pipe.execute()

    async def move(self, job_id: str, state: JobState, result: bytes | None = None) -> bool:
        args: list[Any] = [state.value, repr(now())]
        if result is not None:
            args.append(result)
        async with self._typed(f"mark a job {state.value}"):
            return bool(await self._move_script(keys=[_key(job_id)], args=args))

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._typed("read a job"):
            raw = await self._redis.hgetall(_key(job_id))
        fields = {_bytes(k): _bytes(v) for k, v in raw.items()}
        if b"state" not in fields:
            return None
        result = fields.pop(b"result", None)
        try:
            text = {k.decode(): v.decode() for k, v in fields.items()}
        except UnicodeDecodeError as exc:
            raise Internal(f"result store {self.url}: job {job_id} is malformed: {exc}") from None
        return JobRecord.from_fields(job_id, text, result, self.url)

    async def delete(self, job_id: str) -> None:
        async with self._typed("delete a job"):
            await self._redis.delete(_key(job_id))


def with_password(url: str) -> str:
    """``url`` with the password it should log in with (see the module's docstring)."""
    return resolve_password(url, RESULTS, default_user="default")


class RedisCache(_Redis, ResultCache):
    """The result cache (:mod:`fleet.cache`) in Redis: ``fleet:cache:<model>:
    <version>:<hash>`` with a TTL, and ``fleet:cache:<model>:version``."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        super().__init__(url, timeout=timeout)

    async def get(self, model: str, version: str, key: str) -> bytes | None:
        async with self._typed("read the cache"):
            value = await self._redis.get(f"fleet:cache:{model}:{version}:{key}")
        return None if value is None else _bytes(value)

    async def put(
        self, model: str, version: str, key: str, frame: bytes, ttl: float = DEFAULT_CACHE_TTL_S
    ) -> None:
        async with self._typed("fill the cache"):
            name = f"fleet:cache:{model}:{version}:{key}"
            await self._redis.set(name, frame, px=max(1, int(ttl * 1000)))

    async def current_version(self, model: str) -> str | None:
        async with self._typed("read the current version"):
            value = await self._redis.get(f"fleet:cache:{model}:version")
        return None if value is None else _bytes(value).decode()

    async def set_version(self, model: str, version: str) -> None:
        async with self._typed("set the current version"):
            await self._redis.set(f"fleet:cache:{model}:version", version)


SPEC = ResultStoreSpec(
    name="redis", schemes=("redis", "rediss"), factory=RedisResultStore, cache_factory=RedisCache
)
