"""The claim check: payloads too large for a broker message go through object storage.

A request whose encoded inputs are over the client's threshold (and always
one over the broker's message limit) is uploaded whole, as a request frame
(:func:`fleet.wire.encode_requests`), to a payload store; the broker message
carries the same request without inputs and with one parameter,
:data:`CLAIM`, whose value is the blob's :class:`Ref`: its URL, its SHA-256
and its size. The worker fetches it, checks size and hash, and serves the
request as if it had come whole. A reply over the worker's threshold goes
back the same way: the blob is a reply frame, and the reply on the broker
has one output, :data:`CLAIM`, holding the reference's bytes.

Stores, by URL: ``file:///dir/prefix`` (a directory: one host, or a shared
mount) and ``s3://bucket/prefix`` (boto3; the worker's and the client's AWS
credentials, ``AWS_ENDPOINT_URL_S3`` for another endpoint). A worker only
fetches from and writes to the store it was given (``--payloads``): a
reference elsewhere is refused, so a request cannot make a worker read
what its role may read.

Who deletes what: the client deletes its request blob and the reply blob it
read when its call ends; a job's request blob is deleted by the worker once
the job's result is stored, and its reply blob with the job
(:meth:`producer.jobs.Jobs.forget`) or by the bucket's lifecycle rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import numpy as np

from fleet import wire
from fleet.contract import Reply, Request
from fleet.errors import (
    ConfigError,
    DecodeError,
    InvalidArgument,
    LimitExceeded,
)
from fleet.tensor import Tensor

CLAIM = "fleet.claim"
"""The request parameter, and the reply's only output, that holds a reference."""
DEFAULT_CLAIM_THRESHOLD = 1 << 20
"""Encoded payloads over this many bytes (1 MiB) go through the payload store."""
MAX_PAYLOAD_BYTES = 4 << 30
"""The largest blob a worker or client fetches (4 GiB)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Ref:
    """A blob in a payload store: where, and what it must hash to."""

    url: str
    sha256: str
    size: int

    def encode(self) -> str:
        return f"{self.url}#{urlencode({'sha256': self.sha256, 'size': self.size})}"

    @classmethod
    def parse(cls, text: str) -> Ref:
        url, _, fragment = text.partition("#")
        fields = dict(parse_qsl(fragment))
        try:
            ref = cls(url=url, sha256=fields["sha256"], size=int(fields["size"]))
        except (KeyError, ValueError):
            raise DecodeError(f"{text[:120]!r} is no payload reference") from None
        if len(ref.sha256) != 64 or ref.size < 0 or "://" not in url:
            raise DecodeError(f"{text[:120]!r} is no payload reference")
        return ref


def _checked(ref: Ref, data: bytes) -> bytes:
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise DecodeError(f"payload {ref.url} does not match its reference (size or SHA-256)")
    return data


class PayloadStore(ABC):
    """Blobs under one root URL."""

    root: str

    def owns(self, ref: Ref) -> bool:
        return ref.url.startswith(self.root.rstrip("/") + "/")

    def _url(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise ValueError(f"blob name {name!r}")
        return f"{self.root.rstrip('/')}/{name}"

    async def put(self, name: str, data: bytes) -> Ref:
        """Store ``data`` as ``name`` under the root; its reference."""
        ref = Ref(url=self._url(name), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        await self._put(ref.url, data)
        return ref

    async def get(self, ref: Ref, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
        """The blob, checked against its size and hash."""
        if not self.owns(ref):
            raise ConfigError(f"payload {ref.url} is outside this store ({self.root})")
        if ref.size > max_bytes:
            raise LimitExceeded(f"payload of {ref.size} bytes is over the limit of {max_bytes}")
        return _checked(ref, await self._get(ref.url))

    async def delete(self, ref: Ref) -> None:
        if self.owns(ref):
            await self._delete(ref.url)

    async def delete_named(self, name: str) -> None:
        """Delete the blob ``name`` under the root (none: nothing happens)."""
        await self._delete(self._url(name))

    @abstractmethod
    async def _put(self, url: str, data: bytes) -> None: ...

    @abstractmethod
    async def _get(self, url: str) -> bytes: ...

    @abstractmethod
    async def _delete(self, url: str) -> None: ...


class FilePayloads(PayloadStore):
    """``file:///dir``: files written whole (a temporary file renamed)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"payload store {url!r}: use file:///absolute/dir")
        self.root = f"file://{parts.path.rstrip('/')}"
        self._dir = Path(unquote(parts.path))

    def _path(self, url: str) -> Path:
        return self._dir / url.rsplit("/", 1)[1]

    async def _put(self, url: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(url), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def _get(self, url: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(url).read_bytes)
        except FileNotFoundError:
            raise DecodeError(f"payload {url} is gone") from None

    async def _delete(self, url: str) -> None:
        await asyncio.to_thread(self._path(url).unlink, missing_ok=True)


class S3Payloads(PayloadStore):
    """``s3://bucket/prefix``: one object per blob."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(f"payload store {url!r}: use s3://bucket/prefix")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        from fleet.aws import S3Bucket

        self._bucket = S3Bucket(self.bucket, f"payload store {self.root}", client=client)

    def _key(self, url: str) -> str:
        return url.removeprefix(f"s3://{self.bucket}/")

    async def _put(self, url: str, data: bytes) -> None:
        await self._bucket.call("put", "put_object", Key=self._key(url), Body=data)

    async def _get(self, url: str) -> bytes:
        from fleet.aws import S3Refused

        try:
            reply = await self._bucket.call(
                "get", "get_object", refused=_MISSING, Key=self._key(url)
            )
        except S3Refused:
            raise DecodeError(f"payload {url} is gone") from None
        body: bytes = await asyncio.to_thread(reply["Body"].read)
        return body

    async def _delete(self, url: str) -> None:
        await self._bucket.call("delete", "delete_object", Key=self._key(url))


_MISSING = frozenset({"NoSuchKey", "404"})


_BLOB_LIMITS = wire.Limits(max_message_bytes=MAX_PAYLOAD_BYTES)


def inputs_size(req: Request) -> int:
    """Bytes of ``req``'s tensors: what decides whether it goes through the
    store, counted without encoding it (the rest of a request is small)."""
    return sum(len(t.data) for t in req.inputs)


async def claim_request(req: Request, store: PayloadStore) -> tuple[Request, Ref]:
    """``req`` uploaded whole; the request to send instead (no inputs, the
    reference in its :data:`CLAIM` parameter) and the blob's reference."""
    ref = await store.put(f"{req.id}.request", wire.encode_requests([req], ""))
    params = {**req.parameters, CLAIM: ref.encode()}
    return dataclasses.replace(req, inputs=(), parameters=params), ref


def claim_of(req: Request) -> Ref | None:
    """The reference a claimed request carries, or ``None``."""
    value = req.parameters.get(CLAIM)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter {CLAIM!r} must be a payload reference")
    return Ref.parse(value)


async def resolve_request(req: Request, store: PayloadStore | None) -> Request:
    """A claimed request with its inputs fetched (the same request otherwise)."""
    ref = claim_of(req)
    if ref is None:
        return req
    if store is None:
        raise InvalidArgument("a request whose inputs are in a payload store, and none is set")
    frame = wire.decode_requests(await store.get(ref), _BLOB_LIMITS)
    whole = frame.items[0] if len(frame.items) == 1 else None
    if not isinstance(whole, Request) or (whole.id, whole.model) != (req.id, req.model):
        raise InvalidArgument(f"payload {ref.url} holds another request")
    return dataclasses.replace(req, inputs=whole.inputs, parameters=whole.parameters)


async def claim_reply(reply: Reply, store: PayloadStore) -> Reply:
    """``reply`` uploaded whole; the reply to send instead (one output, :data:`CLAIM`)."""
    ref = await store.put(f"{reply.id}.reply", wire.encode_replies([reply]))
    text = np.frombuffer(ref.encode().encode(), np.uint8)
    return dataclasses.replace(reply, outputs=(Tensor.from_numpy(CLAIM, text),))


def is_claimed(reply: Reply) -> bool:
    """Whether ``reply`` is a claim on a payload store, not the reply itself."""
    return len(reply.outputs) == 1 and reply.outputs[0].name == CLAIM


def reply_claim(reply: Reply) -> Ref | None:
    """The reference a claimed reply carries, or ``None``."""
    if not is_claimed(reply):
        return None
    return Ref.parse(reply.outputs[0].to_numpy().tobytes().decode(errors="replace"))


async def resolve_reply(reply: Reply, store: PayloadStore | None) -> tuple[Reply, Ref | None]:
    """A claimed reply fetched whole (and its reference, to delete it), or
    the same reply and ``None``."""
    ref = reply_claim(reply)
    if ref is None:
        return reply, None
    if store is None:
        raise ConfigError(f"the reply is in a payload store ({ref.url}) and none is set")
    frame = wire.decode_replies(await store.get(ref), _BLOB_LIMITS)
    whole = frame.items[0] if len(frame.items) == 1 else None
    if not isinstance(whole, Reply) or whole.id != reply.id:
        raise DecodeError(f"payload {ref.url} holds another reply")
    return dataclasses.replace(whole, stages=reply.stages), ref


def open_payloads(url: str) -> PayloadStore:
    """The payload store at ``url`` (``file:///dir`` or ``s3://bucket/prefix``)."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FilePayloads(url)
    if scheme == "s3":
        return S3Payloads(url)
    raise ConfigError(f"payload store URL {url[:80]!r}: use file:///dir or s3://bucket/prefix")


__all__ = [
    "CLAIM",
    "DEFAULT_CLAIM_THRESHOLD",
    "MAX_PAYLOAD_BYTES",
    "FilePayloads",
    "PayloadStore",
    "Ref",
    "S3Payloads",
    "claim_of",
    "claim_reply",
    "claim_request",
    "inputs_size",
    "is_claimed",
    "open_payloads",
    "reply_claim",
    "resolve_reply",
    "resolve_request",
]
