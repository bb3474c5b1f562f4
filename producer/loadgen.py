"""Drive traffic through a :class:`Client` and measure it (demo, benchmarks, recommend).

Two modes: *closed loop* (``concurrency`` callers, each sending its next
request when the last one is answered: finds the saturation throughput) and
*open loop* (``rate`` requests/s on a fixed schedule, whatever the latency:
the honest way to measure latency at a given load).

:func:`drive` sends through the broker; :func:`drive_http` sends the same
traffic to workers' Open Inference Protocol over HTTP, spread by an
:class:`OipBalancer`. Both measure into a :class:`LoadResult`; any other
path can use the same loops through :func:`drive_with`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import numpy.typing as npt

from fleet.errors import (
    ConfigError,
    DeadlineExceeded,
    FleetError,
    Internal,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from fleet.tensor import Tensor
from producer.client import Client

Inputs = Mapping[str, npt.ArrayLike]
Send = Callable[[Inputs, "LoadResult"], Awaitable[None]]
"""Sends one request and records its outcome (a latency or an error) in the result."""


@dataclass(eq=False)
class LoadResult:
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    batch_sizes: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    timed_out: int = 0
    batch_known: bool = True  # False where the path reports no batch sizes (OIP HTTP)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0

    @property
    def lost(self) -> int:
        """Requests neither answered nor failed with an error: must be 0."""
        return self.sent - self.ok - sum(self.errors.values())

    def line(self) -> str:
        errs = sum(self.errors.values())
        batch = f"{self.mean_batch:5.1f}" if self.batch_known else "  n/a"
        return (
            f"{self.ok:>8} ok  {self.rps:>9.1f} req/s  p50 {self.percentile(50) * 1e3:7.2f} ms  "
            f"p99 {self.percentile(99) * 1e3:7.2f} ms  batch {batch}  errors {errs}"
        )


async def _one(
    client: Client, model: str, inputs: Inputs, timeout: float, result: LoadResult
) -> None:
    t0 = time.perf_counter()
    try:
        reply = await client.infer_reply(model, inputs, timeout=timeout)
    except DeadlineExceeded as exc:
        result.timed_out += 1
        result.errors[type(exc).__name__] += 1
        return
    except FleetError as exc:
        result.errors[type(exc).__name__] += 1
        return
    if reply.error is not None:
        result.errors[type(reply.error.to_exception()).__name__] += 1
        return
    result.latencies.append(time.perf_counter() - t0)
    result.batch_sizes.append(reply.timings.batch_size)


async def drive(
    client: Client,
    model: str,
    make_inputs: Callable[[int], Inputs],
    *,
    duration: float,
    concurrency: int = 64,
    rate: float | None = None,
    timeout: float = 5.0,
    on_progress: Callable[[LoadResult], None] | None = None,
    progress_every: float = 0.5,
) -> LoadResult:
    """Send traffic for ``duration`` seconds, then wait for what is in flight."""

    async def send(inputs: Inputs, result: LoadResult) -> None:
        await _one(client, model, inputs, timeout, result)

    return await drive_with(
        send,
        make_inputs,
        duration=duration,
        concurrency=concurrency,
        rate=rate,
        on_progress=on_progress,
        progress_every=progress_every,
    )


async def drive_with(
    send: Send,
    make_inputs: Callable[[int], Inputs],
    *,
    duration: float,
    concurrency: int = 64,
    rate: float | None = None,
    on_progress: Callable[[LoadResult], None] | None = None,
    progress_every: float = 0.5,
    result: LoadResult | None = None,
) -> LoadResult:
    """The loops of :func:`drive` around any ``send``: closed loop (``rate``
    None) or open loop, for ``duration`` seconds, then what is in flight."""
    result = LoadResult() if result is None else result
    end = time.perf_counter() + duration
    tasks: set[asyncio.Task[None]] = set()
    counter = iter(range(1 << 62))

    async def one() -> None:
        result.sent += 1
        await send(make_inputs(next(counter)), result)

    async def closed_loop() -> None:
        while time.perf_counter() < end:
            await one()

    async def progress() -> None:
        while on_progress is not None:
            await asyncio.sleep(progress_every)
            on_progress(result)

    reporter = asyncio.get_running_loop().create_task(progress())
    try:
        if rate is None:
            await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
        else:
            gate = asyncio.Semaphore(concurrency)
            interval = 1.0 / rate
            next_at = time.perf_counter()
            while next_at < end:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                task = asyncio.get_running_loop().create_task(one())
                task.add_done_callback(lambda _t: gate.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
            await asyncio.gather(*tasks)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    result.finished = time.perf_counter()
    return result


def random_inputs(width: int, *, seed: int = 0, pool: int = 256) -> Callable[[int], dict[str, Any]]:
    """Inputs of one row of ``width`` float32s, drawn from a fixed pool."""
    rows = np.random.default_rng(seed).standard_normal((pool, width)).astype(np.float32)
    return lambda i: {"input": rows[i % pool : i % pool + 1]}


# ---------------------------------------------------------------- OIP over HTTP

HEADER_LENGTH = "Inference-Header-Content-Length"
_HTTP_ERRORS: dict[int, type[FleetError]] = {
    400: InvalidArgument,
    404: ModelNotFound,
    413: LimitExceeded,
    500: Internal,
    503: Overloaded,
    504: DeadlineExceeded,
}
_GRACE = 0.5  # seconds the client waits past a deadline for the worker's own 504
_BACKOFF = 0.005  # seconds before a further try of a worker already tried, times the try


def oip_body(tensors: Sequence[Tensor], *, timeout: float | None = None) -> tuple[bytes, int]:
    """An OIP ``/infer`` body in the binary tensor data extension: the JSON
    header (each input's data in the binary part, every output asked for in
    binary, the ``timeout`` parameter in microseconds), then the inputs' bytes;
    and the header's length, the ``Inference-Header-Content-Length``."""
    params: dict[str, bool | int] = {"binary_data_output": True}
    if timeout is not None:
        params["timeout"] = max(1, int(timeout * 1e6))
    inputs = [
        {
            "name": t.name,
            "datatype": t.datatype.name,
            "shape": list(t.shape),
            "parameters": {"binary_data_size": len(t.data)},
        }
        for t in tensors
    ]
    header = json.dumps({"inputs": inputs, "parameters": params}, separators=(",", ":")).encode()
    return b"".join([header, *(bytes(t.data) for t in tensors)]), len(header)


def http_error(status: int, body: bytes) -> FleetError:
    """The typed error of an OIP error response (``{"error": "..."}``)."""
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", errors="replace") or "no message"
    return _HTTP_ERRORS.get(status, Internal)(f"HTTP {status}: {message}")


class OipBalancer:
    """Spreads OIP ``/infer`` calls over workers' HTTP endpoints the way a load
    balancer does: each call goes to the next worker in turn (round-robin); a
    503 (that worker is full, stopping or not ready) or a connection that
    fails is retried on the worker after it, at most ``retries`` times
    (default: as many as there are workers) and within the call's deadline.
    A try that comes back to a worker already tried waits a little first.

    ``sent`` counts the tries each worker got, ``retried`` the tries after the
    first. Use it as ``async with OipBalancer(urls) as balancer``.
    """

    def __init__(self, urls: Sequence[str], *, retries: int | None = None) -> None:
        if not urls:
            raise ConfigError("no OIP HTTP endpoints to send to")
        self.urls = [u.rstrip("/") for u in urls]
        self.retries = len(self.urls) if retries is None else retries
        self.sent: Counter[str] = Counter()
        self.retried = 0
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OipBalancer:
        # no connection limit: the caller bounds what is in flight
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def infer(self, model: str, inputs: Inputs, *, timeout: float) -> bytes:
        """One call: the response body of the worker that answered it, or the
        typed error of the last try (:class:`Overloaded` when every try found
        a full worker, :class:`Unavailable` when none could be reached)."""
        tensors = [Tensor.from_numpy(name, value) for name, value in inputs.items()]
        deadline = time.monotonic() + timeout
        first = next(self._turn)
        failure: FleetError = Unavailable("no worker tried")
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                if attempt >= len(self.urls):
                    await asyncio.sleep(min(_BACKOFF * attempt, deadline - time.monotonic()))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"no answer within {timeout:g}s ({attempt} tries)")
            try:
                return await self._post(
                    self.urls[(first + attempt) % len(self.urls)], model, tensors, left
                )
            except (Overloaded, Unavailable) as exc:
                failure = exc
        raise failure

    async def _post(self, url: str, model: str, tensors: Sequence[Tensor], left: float) -> bytes:
        if self._session is None:
            raise RuntimeError("OipBalancer used outside 'async with'")
        body, header_length = oip_body(tensors, timeout=left)
        self.sent[url] += 1
        try:
            async with self._session.post(
                f"{url}/v2/models/{quote(model, safe='')}/infer",
                data=body,
                headers={HEADER_LENGTH: str(header_length)},
                timeout=aiohttp.ClientTimeout(total=left + _GRACE),
            ) as response:
                data = await response.read()
        except TimeoutError:
            raise DeadlineExceeded(f"{url} did not answer within {left:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status != 200:
            raise http_error(response.status, data)
        return data


async def _one_http(
    balancer: OipBalancer, model: str, inputs: Inputs, timeout: float, result: LoadResult
) -> None:
    t0 = time.perf_counter()
    try:
        await balancer.infer(model, inputs, timeout=timeout)
    except DeadlineExceeded as exc:
        result.timed_out += 1
        result.errors[type(exc).__name__] += 1
        return
    except FleetError as exc:
        result.errors[type(exc).__name__] += 1
        return
    result.latencies.append(time.perf_counter() - t0)


async def drive_http(
    balancer: OipBalancer,
    model: str,
    make_inputs: Callable[[int], Inputs],
    *,
    duration: float,
    concurrency: int = 64,
    rate: float | None = None,
    timeout: float = 5.0,
    on_progress: Callable[[LoadResult], None] | None = None,
    progress_every: float = 0.5,
) -> LoadResult:
    """:func:`drive` over the Open Inference Protocol's HTTP: the same loops and
    the same :class:`LoadResult`, each request sent through ``balancer``. The
    protocol's responses carry no batch size: the result has none."""

    async def send(inputs: Inputs, result: LoadResult) -> None:
        await _one_http(balancer, model, inputs, timeout, result)

    return await drive_with(
        send,
        make_inputs,
        duration=duration,
        concurrency=concurrency,
        rate=rate,
        on_progress=on_progress,
        progress_every=progress_every,
        result=LoadResult(batch_known=False),
    )


__all__ = [
    "HEADER_LENGTH",
    "LoadResult",
    "OipBalancer",
    "Send",
    "drive",
    "drive_http",
    "drive_with",
    "http_error",
    "oip_body",
    "random_inputs",
]
