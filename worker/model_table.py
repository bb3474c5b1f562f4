"""The model versions a worker serves, and the routing of a request to one.

Every ingress calls :meth:`ModelTable.route` to turn a request into the
pipeline that answers it and the request's checked arrays::

    pipeline, feeds, rows = table.route(request)   # ModelNotFound, InvalidArgument
    # (InvalidArgument also for a parameter the model does not take)
    pipeline.submit(Item(request=request, feeds=feeds, rows=rows, sink=sink))

A request's ``version`` is a version, a label of the model's
:class:`~worker.serving_policy.ModelPolicy` (a split's pick for the request's
id), or empty: the policy's ``default``, else the newest version served. A
version this worker is about to serve (its watcher is loading it), or one it
has not heard of while it watches its repository, gets a
:class:`~worker.parked.Parked` in place of a pipeline: the request is held
until the version serves or is known not to (see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.contract import Request
from fleet.errors import FleetError, ModelNotFound, Unavailable
from worker.parked import Parked, unknown
from worker.pipeline import BatchStats, Pipeline
from worker.repository import ModelRepository, ModelSpec, version_key
from worker.runtime import Feeds, ModelRuntime, check_parameters, load_runtime
from worker.serving_policy import ModelPolicy

Key = tuple[str, str]  # (model, version)


class ModelTable:
    """Runtimes by model and version, the version a request without one gets,
    and one :class:`Pipeline` per version once :meth:`start` ran."""

    def __init__(self) -> None:
        self.runtimes: dict[str, dict[str, ModelRuntime]] = {}
        self.latest: dict[str, str] = {}
        self.policies: dict[str, ModelPolicy] = {}
        #: versions the watcher is about to serve (settling or loading), by model
        self.coming: dict[str, set[str]] = {}
        #: set while a watcher looks at the repository: asks it for a look now
        self.on_unknown: Callable[[], None] | None = None
        self._parked: dict[Key, Parked] = {}
        self._looks = 0  # looks at the repository begun (see looking())
        self._refused: dict[Key, str] = {}  # versions the watcher refused, and why
        self._pipelines: dict[Key, Pipeline] = {}
        self._pipeline_args: dict[str, Any] | None = None  # set by start()

    @classmethod
    def load(cls, root: str | Path) -> ModelTable:
        """The versions of the repository at ``root`` that each model's policy
        serves (every version without one), loaded by the runtime their
        configuration names and warmed up. Blocks: run it off the event loop."""
        table = cls()
        repo = ModelRepository(root)
        by_model: dict[str, list[ModelSpec]] = {}
        for spec in repo.discover():
            by_model.setdefault(spec.name, []).append(spec)
        for model, specs in by_model.items():
            versions = [s.version for s in specs]
            policy = ModelPolicy.read(specs[0].path.parent.parent, versions)
            chosen = policy.served(versions) if policy is not None else versions
            if policy is not None:
                table.policies[model] = policy
            for spec in specs:
                if spec.version in chosen:
                    runtime = load_runtime(spec)
                    runtime.warm_up()
                    table.add(runtime)
            table.latest[model] = max(table.runtimes[model], key=version_key)
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
            inline_below=spec.config.inline_below_ms / 1000,
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
        self.coming.get(spec.name, set()).discard(spec.version)
        parked = self._parked.pop((spec.name, spec.version), None)
        if parked is not None:
            parked.release(runtime, self._pipelines[(spec.name, spec.version)])

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

    async def remove(self, model: str) -> None:
        """Stop serving ``model`` altogether (an explicit unload): requests
        held for it are answered ``ModelNotFound``, what its versions hold is
        answered, then they are unloaded."""
        versions = self.runtimes.pop(model)
        self.latest.pop(model, None)
        self.policies.pop(model, None)
        self.coming.pop(model, None)
        for key in [k for k in self._parked if k[0] == model]:
            self._parked.pop(key).fail(ModelNotFound(f"model {model!r} was unloaded"))
        for version, runtime in versions.items():
            pipe = self._pipelines.pop((model, version), None)
            if pipe is not None:
                await asyncio.shield(pipe.close())
            runtime.close()

    def route(self, request: Request) -> tuple[Pipeline | Parked, Feeds, int]:
        """The pipeline of the model version ``request`` asks for (see the
        module), and its inputs checked by that runtime; a :class:`Parked`
        (and no checked inputs yet) for a version not served yet."""
        versions = self.runtimes.get(request.model)
        if versions is None:
            raise ModelNotFound(f"this worker does not serve model {request.model!r}")
        version = self.resolve(request.model, request.version, request.id)
        runtime = versions.get(version)
        if runtime is None:
            return self._park(request, version), {}, 0
        check_parameters(runtime, request.parameters)
        feeds, rows = runtime.validate(request.inputs)
        return self._pipelines[(request.model, version)], feeds, rows

    def resolve(self, model: str, asked: str | None, request_id: str) -> str:
        """The version that ``asked`` (a version, a label, or nothing) means
        for one request of a served ``model``."""
        policy = self.policies.get(model)
        if not asked:
            if policy is None or policy.default is None:
                return self.latest[model]
            asked = policy.default
        return policy.resolve(asked, request_id) if policy is not None else asked

    def _park(self, request: Request, version: str) -> Parked:
        model = request.model
        key = (model, version)
        parked = self._parked.get(key)
        if parked is not None:
            return parked
        coming = version in self.coming.get(model, ())
        reason = self._refused.get(key)
        if not coming and reason is not None:  # its files have not changed since
            raise ModelNotFound(
                f"model {model!r} version {version!r} could not be loaded: {reason};"
                f" versions: {self.served(model)}"
            )
        if not coming and self.on_unknown is None:
            raise self.not_found(model, version)
        if self._pipeline_args is None:
            raise Unavailable(f"model {model!r} version {version!r} is not served yet")
        parked = self._parked[key] = Parked(model, version, since=self._looks)
        if not coming and self.on_unknown is not None:
            self.on_unknown()  # perhaps written a moment ago: look now
        return parked

    def not_found(self, model: str, asked: str) -> ModelNotFound:
        """The error for a version or label of ``model`` neither served nor
        coming, naming the versions and labels served."""
        policy = self.policies.get(model)
        return unknown(model, asked, self.served(model), list(policy.labels) if policy else [])

    def served(self, model: str) -> list[str]:
        """The versions of ``model`` served now, oldest first."""
        return sorted(self.runtimes.get(model, ()), key=version_key)

    def looking(self) -> None:
        """A look at the repository begins: requests held from now on wait
        for the next one."""
        self._looks += 1

    def looked(self, refused: dict[Key, str]) -> None:
        """After a look at the repository: requests held (before it began)
        for a version that is neither served nor coming are answered
        ``ModelNotFound`` (why, for a version refused)."""
        self._refused = dict(refused)
        for key, parked in list(self._parked.items()):
            model, version = key
            if version in self.coming.get(model, ()) or parked.since >= self._looks:
                continue
            del self._parked[key]
            reason = refused.get(key)
            if reason is not None:
                exc: FleetError = ModelNotFound(
                    f"model {model!r} version {version!r} could not be loaded: {reason};"
                    f" versions: {self.served(model)}"
                )
            else:
                exc = self.not_found(model, version)
            parked.fail(exc)

    def held(self) -> int:
        """Requests held for versions not served yet."""
        return sum(len(p) for p in self._parked.values())

    async def close(self) -> None:
        """Finish every pipeline's items, then stop them. Requests held for a
        version not served yet are answered ``Unavailable`` (retriable)."""
        parked = self._fail_parked()
        await asyncio.gather(*(p.close() for p in self._pipelines.values()))
        await asyncio.gather(*(p.settled() for p in parked))

    async def abort(self) -> None:
        """Stop every pipeline at once; what they held is never answered
        (held requests included: a broker delivers their messages again)."""
        self._parked = {}
        for p in self._pipelines.values():
            await p.abort()

    def _fail_parked(self) -> list[Parked]:
        parked, self._parked = list(self._parked.values()), {}
        for p in parked:
            p.fail(Unavailable(f"the worker stopped before version {p.version!r} served"))
        return parked


__all__ = ["ModelTable"]
