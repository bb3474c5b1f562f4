"""The worker's HTTP endpoints: liveness, readiness and Prometheus metrics.

``/healthz`` answers 200 while the process serves HTTP at all (liveness: a
worker waiting for its broker is alive). ``/readyz`` answers 200 only when the
worker takes work, 503 otherwise, with a JSON body either way::

    {"ready": false, "status": "waiting for the broker (attempt 3 failed, next in 2.1 s)",
     "models": {"digits": {"1": {"provider": "CUDAExecutionProvider"}}}}

``status`` says why it is not ready; ``models`` (once loaded) names the
execution provider each model version runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"


class HealthServer:
    def __init__(
        self,
        *,
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes],
        details: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """``ready``: ``(ready, status)``; ``details``: more fields of the
        ``/readyz`` body (JSON-serialisable)."""
        self._ready = ready
        self._metrics = metrics
        self._details = details
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get(HEALTH_PATH, self._health)
        app.router.add_get(READY_PATH, self._readyz)
        app.router.add_get(METRICS_PATH, self._metrics_view)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, why = self._ready()
        body: dict[str, Any] = {"ready": ok, "status": why}
        if self._details is not None:
            body.update(self._details())
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics_view(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), content_type="text/plain", charset="utf-8")


__all__ = ["HEALTH_PATH", "METRICS_PATH", "READY_PATH", "HealthServer"]
