"""The Open Inference Protocol (KServe v2) over HTTP: one more ingress of the pipelines.

This server decodes REST calls and hands them to the worker's
:class:`~worker.sync_ingress.SyncIngress`, which it shares with the gRPC
server: one admission limit, one synchronous lane of the same batches as the
queue traffic (see there). The request's ``timeout`` parameter
(microseconds, as Triton's clients send it) is its deadline. A caller that
disconnects cancels its item unless it already runs.

The repository extension: ``POST /v2/repository/index`` lists every version
the worker serves or knows of with its state (``READY``, ``LOADING``,
``UNAVAILABLE`` and why), ``POST /v2/repository/models/{name}/load`` serves
a model from the repository now (every version its policy chooses) and
``.../unload`` stops serving it until it is loaded again. They act on this
worker only; a fleet follows its repository (see :mod:`worker.watcher`).

Errors are the protocol's bodies, ``{"error": "..."}``, with the status of
their :class:`~fleet.errors.FleetError` code: 400 for a malformed request, a
wrong shape or datatype; 404 for a model or version not served; 413 for a
body over the limit; 503 when full, stopping or not ready; 504 past the
deadline; 500 for a failure inside the worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Protocol

from aiohttp import web

from fleet.errors import ErrorCode, FleetError, InvalidArgument, Unavailable
from fleet.logging import get_logger
from worker import oip_codec
from worker.runtime import ModelRuntime
from worker.sync_ingress import SyncIngress

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
_MODEL = "/v2/models/{model}"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
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


def server_version() -> str:
    try:
        return metadata.version("inference-fleet")
    except metadata.PackageNotFoundError:
        return "0"


class RepositoryControl(Protocol):
    """What the repository extension asks of a worker (its watcher)."""

    def index(self) -> list[dict[str, str]]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


class OipHttpServer:
    """The OIP REST endpoints of one worker's synchronous ingress."""

    def __init__(
        self,
        sync: SyncIngress,
        *,
        max_body_bytes: int,
        repository: Callable[[], RepositoryControl | None] = lambda: None,
    ) -> None:
        self._sync = sync
        self._max_body = max_body_bytes
        self._repository = repository
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ serving
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body + 1)
        r = app.router
        r.add_get("/v2", self._server_metadata)
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._server_ready)
        r.add_post("/v2/repository/index", self._index)
        r.add_post("/v2/repository/models/{model}/load", self._load)
        r.add_post("/v2/repository/models/{model}/unload", self._unload)
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
        self._sync.abort_waiting()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ metadata
    async def _server_metadata(self, _request: web.Request) -> web.Response:
        return _json({"name": "fleet", "version": server_version(), "extensions": EXTENSIONS})

    async def _live(self, _request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _server_ready(self, _request: web.Request) -> web.Response:
        ready = self._sync.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    def _runtime(self, request: web.Request) -> tuple[str, str, ModelRuntime]:
        model = request.match_info["model"]
        version, runtime = self._sync.runtime(model, request.match_info.get("version"))
        return model, version, runtime

    async def _model_metadata(self, request: web.Request) -> web.Response:
        try:
            model, _, runtime = self._runtime(request)
        except FleetError as exc:
            return _error(exc)
        return _json(model_metadata(self._sync, model, runtime))

    async def _model_ready(self, request: web.Request) -> web.Response:
        try:
            model, version, _ = self._runtime(request)
        except FleetError as exc:
            return _error(exc)
        ready = self._sync.ready()
        doc = {"name": model, "version": version, "ready": ready}
        return _json(doc, 200 if ready else 503)

    # ------------------------------------------------------------------ repository
    def _control(self) -> RepositoryControl:
        control = self._repository()
        if control is None or not self._sync.ready():
            raise Unavailable("the worker is starting or stopping: not now")
        return control

    async def _index(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be true or false")
            entries = self._control().index()
        except FleetError as exc:
            return _error(exc)
        if ready:
            entries = [e for e in entries if e["state"] == "READY"]
        return web.json_response(entries)

    async def _load(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if body.get("parameters"):
                raise InvalidArgument(
                    "load takes no parameters: the model's files and config.toml come from"
                    " the repository"
                )
            control = self._control()  # a caller that goes away does not cut it short
            await asyncio.shield(asyncio.ensure_future(control.load(request.match_info["model"])))
        except FleetError as exc:
            return _error(exc, 400 if exc.code is not ErrorCode.UNAVAILABLE else None)
        return _json({})

    async def _unload(self, request: web.Request) -> web.Response:
        try:
            await self._body(request)  # unload_dependents: there are none
            control = self._control()
            await asyncio.shield(asyncio.ensure_future(control.unload(request.match_info["model"])))
        except FleetError as exc:
            return _error(exc, 400 if exc.code is not ErrorCode.UNAVAILABLE else None)
        return _json({})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await self._read(request)
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return doc

    # ------------------------------------------------------------------ inference
    async def _infer(self, request: web.Request) -> web.Response:
        try:
            body = await self._read(request)
            model, asked = request.match_info["model"], request.match_info.get("version")
            self._sync.resolve(model, None, "")  # an unknown model first
            parsed = oip_codec.decode_infer(body, request.headers.get(oip_codec.HEADER_LENGTH))
            rid = parsed.id or self._sync.new_id()
            version, runtime = self._sync.resolve(model, asked, rid)
            names = [io.name for io in getattr(runtime, "outputs", ())]
            if names:  # a version not served yet is checked once it is
                oip_codec.check_outputs(parsed, names)
            reply = await self._sync.infer(
                model,
                version,
                parsed.inputs,
                request_id=rid,
                parameters=parsed.parameters,
                timeout_s=parsed.timeout_s,
            )
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


def model_metadata(sync: SyncIngress, model: str, runtime: ModelRuntime) -> dict[str, Any]:
    """The protocol's model metadata of one version of ``model``."""
    name = runtime.spec.config.runtime
    return {
        "name": model,
        "versions": sorted(sync.table.runtimes[model]),
        "platform": "onnxruntime_onnx" if name == "onnxruntime" else name,
        "inputs": _io_metadata(getattr(runtime, "inputs", ())),
        "outputs": _io_metadata(getattr(runtime, "outputs", ())),
    }


def _io_metadata(specs: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "datatype": s.datatype.name,
            "shape": [-1 if d is None else d for d in s.shape],
        }
        for s in specs
    ]


__all__ = [
    "EXTENSIONS",
    "OipHttpServer",
    "RepositoryControl",
    "model_metadata",
    "server_version",
    "status_of",
]
