"""A blocking wrapper around :class:`producer.Client` for scripts and notebooks.

::

    with SyncClient("amqp://guest:guest@127.0.0.1/") as client:
        outputs = client.infer("digits", {"input": x})

It runs the asynchronous client on an event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import numpy.typing as npt

from fleet.contract import ParamValue, Priority
from producer.client import Client

T = TypeVar("T")


class SyncClient:
    """Blocking calls over one :class:`Client`; safe to use from many threads."""

    def __init__(self, url: str = "memory://default", **client_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fleet-client", daemon=True
        )
        self._thread.start()
        self._client = Client(url, **client_options)
        try:
            self._call(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: str | None = None,
        timeout: float | None = None,
        priority: str | Priority = Priority.ONLINE,
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        return self._call(
            self._client.infer(
                model,
                inputs,
                version=version,
                timeout=timeout,
                priority=priority,
                parameters=parameters,
            )
        )

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close(), timeout=30)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SyncClient"]
