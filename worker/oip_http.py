"""The Open Inference Protocol (KServe v2) over HTTP: one more ingress of the pipelines.

An ``/infer`` call becomes an :class:`~worker.pipeline.Item` of the same
pipeline the broker's deliveries feed, so synchronous and queued requests for
one model version share batches; it goes in the synchronous lane, served
before queued ``online`` and ``batch`` items. The server is the
:class:`~worker.pipeline.ReplySink` of its items and wakes each waiting call
with its outcome.

Admission: at most ``max_queued`` synchronous requests wait or run at once;
one more is refused at once with 503 (a load balancer retries elsewhere). The
request's ``timeout`` parameter (microseconds, as Triton's clients send it)
is its deadline, ``default_timeout`` without one: an item not started by then
is dropped and the call answered 504. A caller that disconnects cancels its
item unless it already runs.

Errors are the protocol's bodies, ``{"error": "..."}``, with the status of
their :class:`~fleet.errors.FleetError` code: 400 for a malformed request, a
wrong shape or datatype; 404 for a model or version not served; 413 for a
body over the limit; 503 when full, stopping or not ready; 504 past the
deadline; 500 for a failure inside the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from aiohttp import web

from fleet.contract import Priority, Reply, Request, new_request_id
from fleet.errors import (
    DeadlineExceeded,
    ErrorCode,
    FleetError,
    Internal,
    InvalidArgument,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from fleet.logging import get_logger
from worker import oip_codec
from worker.ledger import Ledger
from worker.model_table import ModelTable
from worker.pipeline import Item, Outcome
from worker.runtime import ModelRuntime

log = get_logger("worker.oip_http")

_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.CONFIG: 500,
}
# what a request's own content can make a runtime's checks raise: its caller's error
_INPUT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError)
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"


def status_of(exc: FleetError) -> int:
    """The HTTP status of a typed error."""
    if isinstance(exc, oip_codec.BodyTooLarge):
        return 413
    return _STATUS.get(exc.code, 500)


def _error(exc: FleetError, status: int | None = None) -> web.Response:
    return web.Response(
        status=status or status_of(exc),
        body=oip_codec.error_body(exc.message),
        content_type=oip_codec.JSON_TYPE,
    )


def _json(doc: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(doc, status=status)


def _server_version() -> str:
    try:
        return metadata.version("inference-fleet")
    except metadata.PackageNotFoundError:
        return "0"


class OipHttpServer:
    """The OIP REST endpoints of one worker's :class:`~worker.model_table.ModelTable`."""

    def __init__(
        self,
        table: ModelTable,
        ledger: Ledger,
        *,
        ready: Callable[[], bool],
        max_body_bytes: int,
        max_queued: int,
        default_timeout: float,
    ) -> None:
        self._table = table
        self._ledger = ledger
        self._ready = ready
        self._max_body = max_body_bytes
        self._max_queued = max_queued
        self._default_timeout = default_timeout
        self._waiting: dict[Item, asyncio.Future[Reply | None]] = {}
        self._queued = 0  # items submitted and not yet settled
        self._runner: web.AppRunner | None = None
        self._ids = map(f"oip-{new_request_id()[:12]}-{{}}".format, itertools.count())
        self.port: int | None = None

    # ------------------------------------------------------------------ serving
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body + 1)
        r = app.router
        r.add_get("/v2", self._server_metadata)
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._server_ready)
        for base in (_MODEL, _VERSION):
            r.add_get(base, self._model_metadata)
            r.add_get(base + "/ready", self._model_ready)
            r.add_post(base + "/infer", self._infer)
        return app

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host``:``port`` (0 picks one); the port."""
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        self.abort_waiting()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def abort_waiting(self) -> None:
        """Answer every call still waiting with 503: its pipeline will not (abort)."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable("the worker stopped before answering"))

    def in_flight(self) -> int:
        """Synchronous requests submitted and not yet settled."""
        return self._queued

    def waiting(self) -> int:
        """Calls waiting for their answer (not those whose caller went away)."""
        return len(self._waiting)

    # ------------------------------------------------------------------ metadata
    async def _server_metadata(self, _request: web.Request) -> web.Response:
        return _json(
            {"name": "fleet", "version": _server_version(), "extensions": ["binary_tensor_data"]}
        )

    async def _live(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _server_ready(self, _request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready() else 503)

    def _runtime(self, request: web.Request) -> tuple[str, str, ModelRuntime]:
        model = request.match_info["model"]
        versions = self._table.runtimes.get(model)
        if versions is None:
            raise ModelNotFound(f"this worker does not serve model {model!r}")
        version = request.match_info.get("version") or self._table.latest[model]
        runtime = versions.get(version)
        if runtime is None:
            raise ModelNotFound(
                f"model {model!r} has no version {version!r}; versions: {sorted(versions)}"
            )
        return model, version, runtime

    async def _model_metadata(self, request: web.Request) -> web.Response:
        try:
            model, _, runtime = self._runtime(request)
        except FleetError as exc:
            return _error(exc)
        name = runtime.spec.config.runtime
        return _json(
            {
                "name": model,
                "versions": sorted(self._table.runtimes[model]),
                "platform": "onnxruntime_onnx" if name == "onnxruntime" else name,
                "inputs": _io_metadata(getattr(runtime, "inputs", ())),
                "outputs": _io_metadata(getattr(runtime, "outputs", ())),
            }
        )

    async def _model_ready(self, request: web.Request) -> web.Response:
        try:
            self._runtime(request)
        except FleetError as exc:
            return _error(exc)
        return web.Response(status=200 if self._ready() else 503)

    # ------------------------------------------------------------------ inference
    async def _infer(self, request: web.Request) -> web.Response:
        try:
            body = await self._read(request)
            model, version, runtime = self._runtime(request)
            parsed = oip_codec.decode_infer(body, request.headers.get(oip_codec.HEADER_LENGTH))
            names = [io.name for io in getattr(runtime, "outputs", ())]
            if names:
                oip_codec.check_outputs(parsed, names)
            reply = await self._serve(model, version, parsed)
            if reply.error is not None:
                return _error(reply.error.to_exception())
            data, headers = oip_codec.encode_infer(parsed, reply)
        except FleetError as exc:
            return _error(exc)
        return web.Response(body=data, headers=headers)

    async def _read(self, request: web.Request) -> bytes:
        size = request.content_length
        if size is not None and size > self._max_body:
            raise oip_codec.oversize(size, self._max_body)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise oip_codec.oversize(self._max_body + 1, self._max_body) from None

    async def _serve(self, model: str, version: str, parsed: oip_codec.InferBody) -> Reply:
        """Submit the request to its pipeline and wait for its reply."""
        if not self._ready():
            raise Unavailable("the worker is not ready")
        if self._queued >= self._max_queued:
            raise Overloaded(f"{self._queued} synchronous requests are waiting; try another worker")
        timeout = parsed.timeout_s or self._default_timeout
        req = Request(
            id=parsed.id or next(self._ids),  # a uuid per call costs a syscall
            model=model,
            version=version,
            inputs=parsed.inputs,
            deadline=time.time() + timeout,
            priority=Priority.ONLINE,
            parameters=parsed.parameters,
            sent_at=time.time(),
            timeout=timeout,
            arrived=time.monotonic(),
        )
        item = self._submit(req)
        fut = self._waiting[item]
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            item.cancelled = True
            raise DeadlineExceeded(f"no answer within the timeout of {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller went away
            item.cancelled = True
            raise
        finally:
            self._waiting.pop(item, None)
        if reply is None:
            raise DeadlineExceeded(f"the deadline of {timeout:g} s passed before inference")
        return reply

    def _submit(self, req: Request) -> Item:
        try:
            pipe, feeds, rows = self._table.route(req)
        except FleetError:
            raise
        except _INPUT_ERRORS as exc:
            raise InvalidArgument(f"the inputs do not fit the model: {exc}") from None
        except Exception as exc:
            log.exception("routing a request failed", model=req.model)
            raise Internal(f"the request could not be served: {exc!r}") from None
        if not pipe.accepting:
            raise Unavailable("the worker is stopping")
        item = Item(request=req, feeds=feeds, rows=rows, sink=self, synchronous=True)
        try:
            pipe.submit(item)
        except Exception as exc:
            log.exception("submitting a request failed", model=req.model)
            raise Internal(f"the request could not be served: {exc!r}") from None
        self._waiting[item] = asyncio.get_running_loop().create_future()
        self._queued += 1
        self._ledger.submitted()
        return item

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Wake each waiting call with its outcome (a cancelled call's is dropped)."""
        for o in outcomes:
            self._queued -= 1
            self._ledger.finished(o)
            fut = self._waiting.get(o.item)
            if fut is not None and not fut.done():
                fut.set_result(o.reply)


def _io_metadata(specs: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "datatype": s.datatype.name,
            "shape": [-1 if d is None else d for d in s.shape],
        }
        for s in specs
    ]


__all__ = ["OipHttpServer", "status_of"]
