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
- **The model's ``model.toml``** (:mod:`worker.serving_policy`) is read on
  every look: its version policy chooses the versions served (a version it no
  longer chooses is retired once none of the model's chosen versions is still
  on its way), its labels and default route requests. A file that cannot be
  used is logged once and the last one accepted stays in force.
- **Requests for a version on its way** are held until it serves (see
  :mod:`worker.parked`); a request for a version the worker has not heard of
  asks for a look at once (:meth:`RepositoryWatcher.wake`) and is answered
  after it.

Explicit control, with or without watching (``interval`` 0: no looks of its
own): :meth:`RepositoryWatcher.load` looks at once and serves a model's
versions without waiting for them to settle; :meth:`RepositoryWatcher.unload`
stops serving a model altogether (its last version too) until it is loaded
again; :meth:`RepositoryWatcher.index` lists every version and its state.
These are the Open Inference Protocol's repository extension
(``/v2/repository/...``) and ``fleet models load|unload|list --worker``.

``on_change(model, new)`` is awaited after each change (``new``: the model
is new to this worker), ``on_removed(model)`` before a model is unloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fleet.errors import ConfigError, FleetError, ModelNotFound
from fleet.logging import get_logger
from worker.metrics import WorkerMetrics
from worker.model_table import ModelTable
from worker.repository import ModelRepository, ModelSpec, Scan
from worker.runtime import ModelRuntime, load_runtime
from worker.serving_policy import ModelPolicy
from worker.versions import version_key

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
        on_removed: Callable[[str], Awaitable[None]] | None = None,
        settle: float = 1.0,
        load: Callable[[ModelSpec], ModelRuntime] = load_and_warm,
    ) -> None:
        if interval < 0:
            raise ValueError("the watch interval must not be negative")
        self.repository = repository
        self.table = table
        self.interval = interval
        self.settle = min(settle, interval) if interval > 0 else settle
        self.metrics = metrics
        self.refused: dict[Key, Refusal] = {}
        self._on_change = on_change
        self._on_removed = on_removed
        self._load = load
        self._lock = asyncio.Lock()  # one look, load or unload at a time
        #: models unloaded explicitly: not served again until loaded
        self.unloaded: set[str] = set()
        self._known: set[Key] = set()  # versions seen in the repository or unloaded
        self._last_look = float("-inf")  # loop time the run loop last looked
        self._seen: dict[Key, Signature] = {}
        self._kept: set[Key] = set()  # removed from the repository, kept: a model's last version
        self._unreadable = False
        self._wake = asyncio.Event()
        #: model -> why its model.toml is not in force (logged once per reason)
        self.policy_problems: dict[str, str] = {}

    def wake(self) -> None:
        """Look now rather than at the end of the interval."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """``seconds``, or until :meth:`wake` (no ``wait_for``: a cancellation
        is never lost)."""
        handle = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()
            self._wake.clear()

    async def run(self) -> None:
        """Look every ``interval`` seconds (``settle`` while something is
        pending, at once when woken) until cancelled; a failed look is logged
        and retried."""
        if self.interval <= 0:
            raise ValueError("the watch interval must be positive to watch")
        pending = False
        while True:
            await self._sleep(self.settle if pending else self.interval)
            gap = (
                self._last_look
                + min(self.settle, self.interval)
                - asyncio.get_running_loop().time()
            )
            if gap > 0:  # woken again right after a look: at most one per settle
                await asyncio.sleep(gap)
            self._last_look = asyncio.get_running_loop().time()
            try:
                pending = await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching the model repository failed; trying again")
                pending = False

    async def poll(self, *, settled: bool = False, only: str | None = None) -> bool:
        """Look once and act on what changed; whether something waits to
        settle (``settled``: take every version as it is now; ``only``: change
        that model alone)."""
        async with self._lock:
            return await self._poll(settled, only)

    async def _poll(self, take_all: bool, only: str | None) -> bool:
        self.table.looking()
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
            self.table.looked({})
            return False
        if self._unreadable:
            log.info("model repository readable again", uri=self.repository.uri)
            self._unreadable = False
        previous, self._seen = self._seen, dict(scan.signatures)
        self._known = set(scan.signatures)
        settled = {k for k, sig in scan.signatures.items() if take_all or previous.get(k) == sig}
        for where, reason in scan.problems:
            key = (where.parent.name, where.name)
            if key not in scan.signatures or key[1] in self.table.runtimes.get(key[0], {}):
                continue  # a model directory, or a version served (never reloaded)
            if key in settled:
                self._refuse(key, scan.signatures[key], reason)
        self._read_policies(scan)
        chosen = self._chosen(scan)
        coming = {
            model: {v for v in versions if v not in self.table.runtimes.get(model, {})}
            for model, versions in chosen.items()
            if only is None or model == only
        }
        if only is not None:  # the others' stay as the last full look left them
            coming = {**{m: vs for m, vs in self.table.coming.items() if m != only}, **coming}
        self.table.coming = coming
        pending = any(k not in settled for m, vs in self.table.coming.items() for k in _keys(m, vs))
        for spec in scan.specs:
            key = (spec.name, spec.version)
            if only is not None and spec.name != only:
                continue
            if spec.version in self.table.coming.get(spec.name, ()) and key in settled:
                await self._serve(spec, scan.signatures[key])
        # chosen again: a version refused just now must not retire one that serves
        await self._retire_removed(set(scan.signatures), self._chosen(scan), only)
        self.table.looked({k: r.reason for k, r in self.refused.items()})
        return pending

    def _chosen(self, scan: Scan) -> dict[str, set[str]]:
        """Per model, the versions to serve: of those in the repository and
        not refused (with the same files), the ones its policy chooses."""
        available: dict[str, list[str]] = {}
        for (model, version), signature in scan.signatures.items():
            if model in self.unloaded:
                continue
            refusal = self.refused.get((model, version))
            if refusal is None or refusal.signature != signature:
                available.setdefault(model, []).append(version)
        chosen: dict[str, set[str]] = {}
        for model, versions in available.items():
            policy = self.table.policies.get(model)
            chosen[model] = set(policy.served(versions) if policy is not None else versions)
        return chosen

    def _read_policies(self, scan: Scan) -> None:
        """Each model's ``model.toml``, checked against its readable versions;
        one that cannot be used leaves the last one in force, said once."""
        readable: dict[str, list[str]] = {}
        for spec in scan.specs:
            readable.setdefault(spec.name, []).append(spec.version)
        for model in {m for m, _ in scan.signatures}:
            try:
                policy = ModelPolicy.read(self.repository.root / model, readable.get(model, []))
            except ConfigError as exc:
                if self.policy_problems.get(model) != exc.message:
                    self.policy_problems[model] = exc.message
                    log.error(
                        "model policy refused; the last one stays", model=model, error=exc.message
                    )
                continue
            self.policy_problems.pop(model, None)
            if policy is None:
                self.table.policies.pop(model, None)
            elif policy != self.table.policies.get(model):
                self.table.policies[model] = policy
                log.info(
                    "model policy in force",
                    model=model,
                    policy=policy.model_dump(exclude_defaults=True),
                )

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
        self.table.coming.get(key[0], set()).discard(key[1])
        self.metrics.model_load_failures.labels(*key).inc()
        log.error("model version refused", model=key[0], version=key[1], error=reason)

    async def _retire_removed(
        self, present: set[Key], chosen: dict[str, set[str]], only: str | None = None
    ) -> None:
        """Retire the served versions gone from the repository, and those its
        policy no longer chooses once none of the model's chosen ones is still
        on its way; never a model's last version."""
        for key in [k for k in self.refused if k not in present]:
            del self.refused[key]
        for model, versions in list(self.table.runtimes.items()):
            if only is not None and model != only:
                continue
            settled = not self.table.coming.get(model)
            for version in list(versions):
                gone = (model, version) not in present
                if not gone and (version in chosen.get(model, {version}) or not settled):
                    continue
                if len(self.table.runtimes[model]) < 2:
                    if gone and (model, version) not in self._kept:
                        self._kept.add((model, version))
                        log.warning(
                            "the last version of a model was removed from the repository;"
                            " it keeps serving",
                            model=model,
                            version=version,
                        )
                    continue
                await self._retire(model, version)
        self._kept -= present  # back in the repository: say so again if removed again

    async def _retire(self, model: str, version: str) -> None:
        runtime = self.table.runtimes[model][version]
        log.info("retiring a model version", model=model, version=version)
        await self.table.retire(model, version)
        self.metrics.model_provider.remove(model, version, runtime.provider)
        log.info(
            "model version retired", model=model, version=version, default=self.table.latest[model]
        )
        await self._on_change(model, False)

    # ------------------------------------------------------------------ explicit control
    async def load(self, model: str) -> None:
        """Serve ``model`` now: a look at once, every version taken as it is;
        :class:`ConfigError` (why) or :class:`ModelNotFound` if it does not serve."""
        self.unloaded.discard(model)
        await self.poll(settled=True, only=model)
        if model in self.table.runtimes:
            return
        reasons = [f"version {v}: {r.reason}" for (m, v), r in self.refused.items() if m == model]
        if model in self.policy_problems:
            reasons.append(f"model.toml: {self.policy_problems[model]}")
        if reasons:
            raise ConfigError(f"model {model!r} could not be loaded: " + "; ".join(reasons))
        known = sorted({m for m, _ in self._seen})
        raise ModelNotFound(f"model {model!r} is not in {self.repository.uri} (models: {known})")

    async def unload(self, model: str) -> None:
        """Stop serving ``model`` (every version) until :meth:`load`."""
        async with self._lock:
            if model not in self.table.runtimes:
                raise ModelNotFound(f"this worker does not serve model {model!r}")
            self.unloaded.add(model)
            self._known.update((model, v) for v in self.table.runtimes[model])
            log.info("unloading a model", model=model)
            if self._on_removed is not None:
                await self._on_removed(model)
            for version, runtime in self.table.runtimes[model].items():
                self.metrics.model_provider.remove(model, version, runtime.provider)
            await self.table.remove(model)
            log.info("model unloaded", model=model)

    def index(self) -> list[dict[str, str]]:
        """Every version this worker serves or knows of in its repository
        (as of its last look), with its state: ``READY`` (served),
        ``LOADING`` (on its way), ``UNAVAILABLE`` (with why)."""
        keys = self._known | {(m, v) for m, vs in self.table.runtimes.items() for v in vs}
        out: list[dict[str, str]] = []
        for model, version in sorted(keys, key=lambda k: (k[0], version_key(k[1]))):
            entry = {"name": model, "version": version}
            refusal = self.refused.get((model, version))
            if version in self.table.runtimes.get(model, {}):
                entry["state"] = "READY"
            elif version in self.table.coming.get(model, ()):
                entry["state"] = "LOADING"
            else:
                entry["state"] = "UNAVAILABLE"
                entry["reason"] = (
                    refusal.reason
                    if refusal is not None
                    else "unloaded"
                    if model in self.unloaded
                    else "not chosen by the model's policy"
                )
            out.append(entry)
        return out


def _keys(model: str, versions: set[str]) -> list[Key]:
    return [(model, v) for v in versions]


__all__ = ["Refusal", "RepositoryWatcher", "load_and_warm"]
