"""Repository watching: versions written into the repository while a worker
serves are loaded, warmed up and switched in; versions removed are drained
and unloaded.

Every ``interval`` seconds the watcher looks at the repository (an S3 root is
synced first). A version directory it has not seen is taken once its files
have stayed the same for one look (a short one, ``settle`` seconds after the
last, while something is pending): a version being copied in is not read
half-written. Writing a version under a hidden name (``.3`` or ``_3``, which
the repository skips) and renaming it when complete is safer still.

- **New version**: loaded by the runtime its configuration names and warmed
  up for every batch size, off the event loop, while the other versions
  serve; then served beside them. The newest version becomes the model's
  default at once: the next request without a version gets it. A request
  pinned to a version keeps getting that version while it is served.
- **A version that fails to load** (a corrupt file, a bad config, a missing
  execution provider) is refused: logged with why, counted in
  ``fleet_worker_model_load_failures``, listed under ``refused`` in
  ``/readyz``, and never served. The same files are not tried again; new
  files in its place are.
- **Removed version**: no request is routed to it from then on; what it
  holds is answered, then it is unloaded. A model's last version is never
  unloaded (the worker keeps serving it and says so once).
- **New model**: served like a new version, and the worker starts consuming
  its queues.
- **A served version's files changed**: it is not loaded again; a change is a
  new version.

``on_change(model, new)`` is awaited after each change (``new``: the model
is new to this worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.logging import get_logger
from worker.metrics import WorkerMetrics
from worker.model_table import ModelTable
from worker.repository import ModelRepository, ModelSpec
from worker.runtime import ModelRuntime, load_runtime

log = get_logger(__name__)

Key = tuple[str, str]  # (model, version)
Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A version the watcher would not serve, and why."""

    signature: Signature
    reason: str


def load_and_warm(spec: ModelSpec) -> ModelRuntime:
    """Load one version and run every batch size once. Blocks."""
    runtime = load_runtime(spec)
    try:
        runtime.warm_up()
    except BaseException:
        runtime.close()
        raise
    return runtime


class RepositoryWatcher:
    """Keeps a :class:`ModelTable` in step with its repository."""

    def __init__(
        self,
        repository: ModelRepository,
        table: ModelTable,
        *,
        interval: float,
        metrics: WorkerMetrics,
        on_change: Callable[[str, bool], Awaitable[None]],
        settle: float = 1.0,
        load: Callable[[ModelSpec], ModelRuntime] = load_and_warm,
    ) -> None:
        if interval <= 0:
            raise ValueError("the watch interval must be positive")
        self.repository = repository
        self.table = table
        self.interval = interval
        self.settle = min(settle, interval)
        self.metrics = metrics
        self.refused: dict[Key, Refusal] = {}
        self._on_change = on_change
        self._load = load
        self._seen: dict[Key, Signature] = {}
        self._kept: set[Key] = set()  # removed from the repository, kept: a model's last version
        self._unreadable = False

    async def run(self) -> None:
        """Look every ``interval`` seconds (``settle`` while something is
        pending) until cancelled; a failed look is logged and retried."""
        pending = False
        while True:
            await asyncio.sleep(self.settle if pending else self.interval)
            try:
                pending = await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching the model repository failed; trying again")
                pending = False

    async def poll(self) -> bool:
        """Look once and act on what changed; whether something waits to settle."""
        try:
            scan = await asyncio.to_thread(self.repository.scan)
        except FleetError as exc:
            if not self._unreadable:  # once, until it can be read again
                log.warning(
                    "model repository unreadable; serving what is loaded",
                    uri=self.repository.uri,
                    error=exc.message,
                )
            self._unreadable = True
            return False
        if self._unreadable:
            log.info("model repository readable again", uri=self.repository.uri)
            self._unreadable = False
        previous, self._seen = self._seen, dict(scan.signatures)
        settled = {k for k, sig in scan.signatures.items() if previous.get(k) == sig}
        pending = False
        for where, reason in scan.problems:
            key = (where.parent.name, where.name)
            if key not in scan.signatures or key[1] in self.table.runtimes.get(key[0], {}):
                continue  # a model directory, or a version served (never reloaded)
            if key in settled:
                self._refuse(key, scan.signatures[key], reason)
            else:
                pending = True
        for spec in scan.specs:
            key = (spec.name, spec.version)
            if spec.version in self.table.runtimes.get(spec.name, {}):
                continue
            signature = scan.signatures[key]
            refusal = self.refused.get(key)
            if refusal is not None and refusal.signature == signature:
                continue
            if key not in settled:
                pending = True
                continue
            await self._serve(spec, signature)
        await self._retire_removed(set(scan.signatures))
        return pending

    async def _serve(self, spec: ModelSpec, signature: Signature) -> None:
        key = (spec.name, spec.version)
        log.info("loading a new model version", model=spec.name, version=spec.version)
        try:
            runtime = await asyncio.to_thread(self._load, spec)
        except Exception as exc:
            reason = exc.message if isinstance(exc, FleetError) else f"{type(exc).__name__}: {exc}"
            self._refuse(key, signature, reason)
            return
        self.refused.pop(key, None)
        new_model = spec.name not in self.table.runtimes
        self.table.serve(runtime)
        self.metrics.model_provider.labels(spec.name, spec.version, runtime.provider).set(1)
        log.info(
            "model version serving",
            model=spec.name,
            version=spec.version,
            default=self.table.latest[spec.name],
            provider=runtime.provider,
        )
        await self._on_change(spec.name, new_model)

    def _refuse(self, key: Key, signature: Signature, reason: str) -> None:
        known = self.refused.get(key)
        if known is not None and known.signature == signature:
            return
        self.refused[key] = Refusal(signature, reason)
        self.metrics.model_load_failures.labels(*key).inc()
        log.error("model version refused", model=key[0], version=key[1], error=reason)

    async def _retire_removed(self, present: set[Key]) -> None:
        for key in [k for k in self.refused if k not in present]:
            del self.refused[key]
        for model, versions in list(self.table.runtimes.items()):
            for version in [v for v in versions if (model, v) not in present]:
                if len(self.table.runtimes[model]) < 2:
                    if (model, version) not in self._kept:
                        self._kept.add((model, version))
                        log.warning(
                            "the last version of a model was removed from the repository;"
                            " it keeps serving",
                            model=model,
                            version=version,
                        )
                    continue
                runtime = self.table.runtimes[model][version]
                log.info("retiring a model version", model=model, version=version)
                await self.table.retire(model, version)
                self.metrics.model_provider.remove(model, version, runtime.provider)
                log.info(
                    "model version retired",
                    model=model,
                    version=version,
                    default=self.table.latest[model],
                )
                await self._on_change(model, False)
        self._kept -= present  # back in the repository: say so again if removed again


__all__ = ["Refusal", "RepositoryWatcher", "load_and_warm"]
