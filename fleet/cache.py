"""The result cache: answers kept by model, served version and a hash of the inputs.

Opt in on both sides with the same cache URL (``memory://NAME`` or
``redis://``/``rediss://``; :func:`fleet.jobs.open_cache`):
``Client(url, cache=...)`` and ``fleet worker --cache ...``. Before
publishing, the client hashes the request (:func:`inputs_key`: the model,
the inputs' names, types, shapes and bytes, and the parameters) and looks up
``(model, version, hash)``; a hit is answered at once without the broker. On
a miss the request carries the hash (:data:`CACHE_PARAM`) and the worker that
answers it stores the reply under the version it actually served.

A request that names no version is looked up under the model's *current*
version: the newest version a worker serving the cache announced when it
started (:meth:`ResultCache.set_version`; the client reads it again every
2 s). So once a worker serves a new version, clients look under the new
version, and an answer of the old one is never served for it; answers are
kept ``ttl`` seconds (an hour by default). Only answers are cached, never
errors.
"""

from __future__ import annotations

import hashlib
import struct
import time
from abc import ABC, abstractmethod
from typing import ClassVar

from fleet.contract import Request

CACHE_PARAM = "fleet.cache"
"""The request parameter with its inputs' hash: the worker fills the cache."""
DEFAULT_CACHE_TTL_S = 3600.0


def inputs_key(req: Request) -> str:
    """A SHA-256 of what decides the answer: model, inputs, parameters."""
    h = hashlib.sha256()
    h.update(req.model.encode() + b"\0")
    for t in sorted(req.inputs, key=lambda t: t.name):
        h.update(f"{t.name}\0{t.datatype.value}\0{t.shape}\0".encode())
        h.update(struct.pack("<Q", len(t.data)))
        h.update(t.data)
    for k, v in sorted(req.parameters.items()):
        if not k.startswith("fleet."):
            h.update(f"{k}\0{type(v).__name__}\0{v!r}\0".encode())
    return h.hexdigest()


class ResultCache(ABC):
    """Encoded replies by (model, version, inputs' hash), and each model's
    current version."""

    url: str

    async def __aenter__(self) -> ResultCache:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:  # noqa: B027 (optional)
        """Check that the cache answers."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""

    @abstractmethod
    async def get(self, model: str, version: str, key: str) -> bytes | None: ...

    @abstractmethod
    async def put(
        self, model: str, version: str, key: str, frame: bytes, ttl: float = DEFAULT_CACHE_TTL_S
    ) -> None: ...

    @abstractmethod
    async def current_version(self, model: str) -> str | None: ...

    @abstractmethod
    async def set_version(self, model: str, version: str) -> None: ...


class MemoryCache(ResultCache):
    """``memory://NAME``: in this process; caches of one name share entries."""

    _shared: ClassVar[dict[str, dict[str, tuple[bytes, float]]]] = {}

    def __init__(self, url: str) -> None:
        self.url = url
        self._entries = self._shared.setdefault(url.removeprefix("memory://"), {})

    async def get(self, model: str, version: str, key: str) -> bytes | None:
        entry = self._entries.get(f"{model}:{version}:{key}")
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def put(
        self, model: str, version: str, key: str, frame: bytes, ttl: float = DEFAULT_CACHE_TTL_S
    ) -> None:
        self._entries[f"{model}:{version}:{key}"] = (bytes(frame), time.monotonic() + ttl)

    async def current_version(self, model: str) -> str | None:
        entry = self._entries.get(f"{model}:version")
        return None if entry is None else entry[0].decode()

    async def set_version(self, model: str, version: str) -> None:
        self._entries[f"{model}:version"] = (version.encode(), float("inf"))


__all__ = [
    "CACHE_PARAM",
    "DEFAULT_CACHE_TTL_S",
    "MemoryCache",
    "ResultCache",
    "inputs_key",
]
