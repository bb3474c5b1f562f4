"""A ledger of every request sent under faults, and what became of it.

Each request is sent with an id of our own and an input no other request has,
so an answer can be checked against the output ONNX Runtime gives for that
exact input. The outcomes:

- ``ok``: answered, with the reply's id and outputs those of this request;
- an error type name (``DeadlineExceeded``, ``Unavailable``, ``LimitExceeded``,
  ...): a typed error (:class:`fleet.errors.FleetError`);
- ``crossed``: an answer whose id or outputs belong to another request;
- ``hung``: no answer and no typed error within the deadline + 1 s;
- ``lost``: the call ended without an answer or a typed error (an untyped
  exception), or a request sent in clear weather (no fault in its lifetime,
  give or take ``grace``) ran out of time: nothing explains that but a loss;
- ``unexpected``: a request that had to fail (oversize, malformed) was
  answered, or failed with the wrong type.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.contract import Priority, new_request_id
from fleet.errors import DeadlineExceeded, FleetError, Unavailable
from producer import Client

SLACK = 1.0  # seconds past its deadline an outcome may take
BAD = ("lost", "crossed", "hung", "unexpected")


@dataclass
class Entry:
    id: str
    model: str
    timeout: float
    sent: float  # time.monotonic()
    ended: float = 0.0
    outcome: str = ""
    detail: str = ""


@dataclass
class Ledger:
    """Every request and its outcome; ``faults`` are the (start, end) windows
    of the faults injected, in ``time.monotonic()`` seconds."""

    grace: float = 5.0
    entries: list[Entry] = field(default_factory=list)
    faults: list[tuple[float, float]] = field(default_factory=list)
    _open_fault: float | None = None

    def fault_started(self) -> None:
        self._open_fault = time.monotonic()

    def fault_ended(self) -> None:
        if self._open_fault is not None:
            self.faults.append((self._open_fault, time.monotonic()))
            self._open_fault = None

    def _in_fault(self, start: float, end: float) -> bool:
        if self._open_fault is not None and self._open_fault <= end + self.grace:
            return True
        return any(a - self.grace <= end and start <= b + self.grace for a, b in self.faults)

    async def call(
        self,
        client: Client,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        timeout: float,
        expect: Mapping[str, npt.NDArray[Any]] | None = None,
        expect_error: type[FleetError] | None = None,
        priority: Priority = Priority.ONLINE,
    ) -> Entry:
        """Send one request and record its outcome: ``expect`` the outputs of
        a good request, or ``expect_error`` the error a bad one must get."""
        entry = Entry(id=new_request_id(), model=model, timeout=timeout, sent=time.monotonic())
        self.entries.append(entry)
        try:
            reply = await asyncio.wait_for(
                client.infer_reply(
                    model, inputs, timeout=timeout, priority=priority, request_id=entry.id
                ),
                timeout + SLACK + 5,
            )
        except TimeoutError:
            entry.outcome, entry.detail = "hung", "no outcome at all"
            entry.ended = time.monotonic()
            return entry
        except FleetError as exc:
            entry.ended = time.monotonic()
            self._failed(entry, exc, expect_error)
        except Exception as exc:
            entry.ended = time.monotonic()
            entry.outcome, entry.detail = "lost", repr(exc)
        else:
            entry.ended = time.monotonic()
            if reply.error is not None:
                self._failed(entry, reply.error.to_exception(), expect_error)
            elif expect_error is not None:
                entry.outcome, entry.detail = "unexpected", "answered; wanted an error"
            else:
                self._answered(entry, reply.id, reply.arrays(), expect)
        if entry.outcome not in ("hung", "lost") and entry.ended - entry.sent > timeout + SLACK:
            entry.detail = f"{entry.outcome} after {entry.ended - entry.sent:.2f}s"
            entry.outcome = "hung"
        return entry

    def _failed(self, entry: Entry, exc: FleetError, want: type[FleetError] | None) -> None:
        entry.outcome, entry.detail = type(exc).__name__, exc.message[:200]
        if isinstance(exc, DeadlineExceeded | Unavailable) and not (
            want is not None and isinstance(exc, want)
        ):
            # no answer in time: a fault explains it (a bad request that never
            # reached a worker, too); in clear weather it is a loss
            if not self._in_fault(entry.sent, entry.sent + entry.timeout):
                entry.outcome = "lost"
                entry.detail = f"{type(exc).__name__} with no fault near: {exc.message[:150]}"
        elif want is not None and not isinstance(exc, want):
            entry.outcome = "unexpected"
            entry.detail = f"{type(exc).__name__} ({exc.message[:150]}); wanted {want.__name__}"

    @staticmethod
    def _answered(
        entry: Entry,
        reply_id: str,
        got: Mapping[str, npt.NDArray[Any]],
        want: Mapping[str, npt.NDArray[Any]] | None,
    ) -> None:
        if reply_id != entry.id:
            entry.outcome, entry.detail = "crossed", f"reply id {reply_id}"
            return
        for name, w in (want or {}).items():
            g = got.get(name)
            if g is None or g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-5):
                entry.outcome, entry.detail = "crossed", f"output {name!r} is not this input's"
                return
        entry.outcome = "ok"

    def counts(self) -> Counter[str]:
        return Counter(e.outcome or "pending" for e in self.entries)

    def bad(self) -> list[Entry]:
        """Entries that break the rules: lost, crossed, hung, unexpected, pending."""
        return [e for e in self.entries if e.outcome in BAD or not e.outcome]

    def summary(self, allowed: tuple[str, ...] = ()) -> str:
        """The counts, then up to ten entries that break the rules or end in
        an outcome other than ``ok`` and the ``allowed`` ones."""
        lines = [f"{k}={v}" for k, v in sorted(self.counts().items())]
        fine = {"ok", *allowed}
        odd = self.bad() + [e for e in self.entries if e.outcome and e.outcome not in {*BAD, *fine}]
        for e in odd[:10]:
            lines.append(f"  {e.outcome}: {e.model} {e.id} {e.detail}")
        return "\n".join(lines)


__all__ = ["BAD", "SLACK", "Entry", "Ledger"]
