"""The model versions a worker serves, and the routing of a request to one.

Every ingress calls :meth:`ModelTable.route` to turn a request into the
pipeline that answers it and the request's checked arrays::

    pipeline, feeds, rows = table.route(request)   # ModelNotFound, InvalidArgument
    # (InvalidArgument also for a parameter the model does not take)
    pipeline.submit(Item(request=request, feeds=feeds, rows=rows, sink=sink))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.contract import Request
from fleet.errors import ModelNotFound
from worker.pipeline import BatchStats, Pipeline
from worker.repository import ModelRepository, version_key
from worker.runtime import Feeds, ModelRuntime, check_parameters, load_runtime


class ModelTable:
    """Runtimes by model and version, the version a request without one gets,
    and one :class:`Pipeline` per version once :meth:`start` ran."""

    def __init__(self) -> None:
        self.runtimes: dict[str, dict[str, ModelRuntime]] = {}
        self.latest: dict[str, str] = {}
        self._pipelines: dict[tuple[str, str], Pipeline] = {}
        self._pipeline_args: dict[str, Any] | None = None  # set by start()

    @classmethod
    def load(cls, root: str | Path) -> ModelTable:
        """Every version in the repository at ``root``, loaded by the runtime its
        configuration names and warmed up. Blocks: run it off the event loop."""
        table = cls()
        repo = ModelRepository(root)
        for spec in repo.discover():
            runtime = load_runtime(spec)
            runtime.warm_up()
            table.add(runtime)
        for model in table.runtimes:
            table.latest[model] = repo.get(model).version  # the repository's "newest"
        return table

    def add(self, runtime: ModelRuntime) -> None:
        """Serve ``runtime``; the first version added of a model is its default
        until :attr:`latest` says otherwise."""
        spec = runtime.spec
        self.runtimes.setdefault(spec.name, {})[spec.version] = runtime
        self.latest.setdefault(spec.name, spec.version)

    @property
    def models(self) -> list[str]:
        return sorted(self.runtimes)

    @property
    def providers(self) -> list[str]:
        """Every provider in use, once each."""
        return sorted({r.provider for v in self.runtimes.values() for r in v.values()})

    def max_batch_size(self, model: str | None = None) -> int:
        """The largest batch of one model's versions, or of every model (1 with none)."""
        models = [model] if model is not None else list(self.runtimes)
        sizes = [r.max_batch_size for m in models for r in self.runtimes[m].values()]
        return max(sizes, default=1)

    def start(
        self, *, worker_id: str, on_batch: Callable[[BatchStats], None], threads: int = 1
    ) -> None:
        """One running pipeline per model version."""
        self._pipeline_args = {"worker_id": worker_id, "on_batch": on_batch, "threads": threads}
        for versions in self.runtimes.values():
            for runtime in versions.values():
                self._start_pipeline(runtime)

    def _start_pipeline(self, runtime: ModelRuntime) -> None:
        assert self._pipeline_args is not None
        spec = runtime.spec
        pipe = Pipeline(
            model=spec.name,
            version=spec.version,
            runner=runtime,
            max_wait=spec.config.max_wait_ms / 1000,
            **self._pipeline_args,
        )
        pipe.start()
        self._pipelines[(spec.name, spec.version)] = pipe

    def serve(self, runtime: ModelRuntime) -> None:
        """Start serving ``runtime`` (loaded and warmed up) beside the versions
        served now; a version newer than the model's default becomes the
        default at once: the next request without a version gets it."""
        spec = runtime.spec
        if spec.version in self.runtimes.get(spec.name, {}):
            raise ValueError(f"model {spec.name!r} version {spec.version!r} is served already")
        if self._pipeline_args is not None:
            self._start_pipeline(runtime)
        self.add(runtime)
        self.latest[spec.name] = max(self.runtimes[spec.name], key=version_key)

    async def retire(self, model: str, version: str) -> None:
        """Stop serving one version: no request is routed to it from now on,
        and the requests it holds are answered before its pipeline stops.
        A model's last version is never retired."""
        versions = self.runtimes[model]
        if len(versions) < 2:
            raise ValueError(f"model {model!r} version {version!r} is its last")
        runtime = versions.pop(version)
        self.latest[model] = max(versions, key=version_key)
        pipe = self._pipelines.pop((model, version), None)
        if pipe is not None:  # finishes even if the caller is cancelled meanwhile
            await asyncio.shield(pipe.close())
        runtime.close()

    def route(self, request: Request) -> tuple[Pipeline, Feeds, int]:
        """The pipeline of the model version ``request`` asks for (the default
        version when it names none), and its inputs checked by that runtime."""
        versions = self.runtimes.get(request.model)
        if versions is None:
            raise ModelNotFound(f"this worker does not serve model {request.model!r}")
        version = request.version or self.latest[request.model]
        runtime = versions.get(version)
        if runtime is None:
            raise ModelNotFound(
                f"model {request.model!r} has no version {version!r}; versions: {sorted(versions)}"
            )
        check_parameters(runtime, request.parameters)
        feeds, rows = runtime.validate(request.inputs)
        return self._pipelines[(request.model, version)], feeds, rows

    async def close(self) -> None:
        """Finish every pipeline's items, then stop them."""
        await asyncio.gather(*(p.close() for p in self._pipelines.values()))

    async def abort(self) -> None:
        """Stop every pipeline at once; what they held is never answered."""
        for p in self._pipelines.values():
            await p.abort()


__all__ = ["ModelTable"]
