"""Requests for a version this worker is about to serve, held until it does.

During a rollout each worker loads a new version on its own look at the
repository, so for a moment some workers serve it and others do not yet. A
request pinned to it (or to a label that names it) that reaches a worker
still loading it is held here rather than failed; once the version serves,
its inputs are checked by the version's runtime and it joins that version's
pipeline. If the version is refused (it does not load) or leaves the
repository, the held requests are answered
:class:`~fleet.errors.ModelNotFound` with why.

A request for a version the worker has not heard of is held too, while the
worker takes one look at its repository (one written a moment ago may be
there); after that look it is answered ``ModelNotFound`` at once.

A held request whose deadline passes, or whose caller went away, is dropped
(settled unanswered, as a pipeline drops an expired item) on a sweep every
half second.

The ingress sees a :class:`Parked` as it sees a pipeline: ``accepting`` and
``submit``; its items are settled through their own sinks.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence

from fleet.contract import ErrorInfo, Reply
from fleet.errors import FleetError, Internal, InvalidArgument, ModelNotFound
from fleet.logging import get_logger
from worker.pipeline import Item, Outcome, Pipeline, ReplySink
from worker.runtime import ModelRuntime, check_parameters

log = get_logger(__name__)

# what a request's own content can make a runtime's checks raise: its caller's error
_INPUT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError)
SWEEP_S = 0.5  # how often held requests are checked for their deadline


class Parked:
    """The held requests of one version not served yet."""

    def __init__(self, model: str, version: str, *, since: int = 0) -> None:
        self.model = model
        self.version = version
        self.since = since  # the table's looks begun when the first request was held
        self.items: list[Item] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def accepting(self) -> bool:
        return True

    def submit(self, item: Item) -> None:
        self.items.append(item)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_S, self._drop_expired)

    def _drop_expired(self) -> None:
        self._sweep = None
        now = time.time()
        gone = [i for i in self.items if i.cancelled or i.request.expired(now)]
        if gone:
            self.items = [i for i in self.items if i not in gone]
            self._settle([Outcome(i, None) for i in gone])
        if self.items:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_S, self._drop_expired)

    def _stop_sweeping(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def __len__(self) -> int:
        return len(self.items)

    def release(self, runtime: ModelRuntime, pipeline: Pipeline) -> None:
        """The version serves: check each held request and hand it to ``pipeline``."""
        self._stop_sweeping()
        items, self.items = self.items, []
        failed: list[Outcome] = []
        for item in items:
            try:
                check_parameters(runtime, item.request.parameters)
                item.feeds, item.rows = runtime.validate(item.request.inputs)
                pipeline.submit(item)
            except FleetError as exc:
                failed.append(self._failed(item, exc))
            except _INPUT_ERRORS as exc:
                failed.append(self._failed(item, InvalidArgument(f"inputs do not fit: {exc}")))
            except Exception as exc:
                log.exception("releasing a held request failed", model=self.model)
                failed.append(self._failed(item, Internal(f"could not be served: {exc!r}")))
        if items:
            log.info(
                "held requests released",
                model=self.model,
                version=self.version,
                requests=len(items) - len(failed),
                refused=len(failed),
            )
        self._settle(failed)

    def fail(self, exc: FleetError) -> None:
        """The version will not serve: answer every held request with ``exc``."""
        self._stop_sweeping()
        items, self.items = self.items, []
        if items:
            log.warning(
                "held requests failed",
                model=self.model,
                version=self.version,
                requests=len(items),
                error=exc.message,
            )
        self._settle([self._failed(item, exc) for item in items])

    def _failed(self, item: Item, exc: FleetError) -> Outcome:
        # no version: the one asked for may be any string a client sent
        reply = Reply(id=item.request.id, model=self.model, error=ErrorInfo.of(exc))
        return Outcome(item, reply)

    def _settle(self, outcomes: Sequence[Outcome]) -> None:
        by_sink: dict[ReplySink, list[Outcome]] = defaultdict(list)
        for o in outcomes:
            by_sink[o.item.sink].append(o)
        loop = asyncio.get_running_loop()
        for sink, group in by_sink.items():
            task = loop.create_task(self._deliver(sink, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sink: ReplySink, outcomes: list[Outcome]) -> None:
        try:
            await sink.settle(outcomes)
        except Exception:
            log.exception("answering held requests failed", model=self.model)

    async def settled(self) -> None:
        """Return once every answer this object sent is delivered."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def unknown(model: str, asked: str, served: Sequence[str], labels: Sequence[str]) -> ModelNotFound:
    """The error for a version (or label) that is neither served nor coming."""
    also = f"; labels: {sorted(labels)}" if labels else ""
    return ModelNotFound(
        f"model {model!r} has no version or label {asked!r}; versions: {list(served)}{also}"
    )


__all__ = ["Parked", "unknown"]
