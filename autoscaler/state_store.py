"""The policy's state, kept across restarts of the autoscaler.

A policy's state holds its cooldowns, its scale-in stabilization window and
what it learned about recurring surges; without it, a restarted autoscaler
scales in at once after a scale-out, or forgets a surge it was about to
pre-warm for. :class:`StateStore` writes the state to a local JSON file
after every poll (atomically: a temporary file renamed over the old one) and
reads it back at start.

The file (version 1)::

    {"version": 1, "policy": "default", "state_type": "PolicyState",
     "saved_at": 1767225600.0, "state": {"last_out_at": 1767225590.0, ...}}

Times in a state are the snapshots' ``now``: the live signals read it from
the wall clock, so a state stays meaningful on another host or after a
reboot. A file written for another policy, or one that cannot be read or
validated, is reported and ignored: the policy starts from its initial state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from autoscaler.types import Policy
from fleet.logging import get_logger

log = get_logger("autoscaler.state_store")

STATE_VERSION = 1
S = TypeVar("S")


class StateStore:
    """A policy's state in a local JSON file."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock

    def save(self, policy: Policy[S], state: S) -> None:
        """Write ``state`` (a dataclass, or ``None``); never raises for I/O,
        it logs (the loop goes on without persistence)."""
        if state is not None and not dataclasses.is_dataclass(state):
            return
        doc = {
            "version": STATE_VERSION,
            "policy": policy.name,
            "state_type": type(state).__name__,
            "saved_at": self.clock(),
            "state": None if state is None else _plain(dataclasses.asdict(state)),  # type: ignore[arg-type]
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("policy state not saved", path=str(self.path), error=repr(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()

    def load(self, policy: Policy[S]) -> S | None:
        """The state saved for ``policy``, or ``None`` when there is none it
        can use (no file, another policy, unreadable or invalid: logged)."""
        initial = policy.initial_state()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning(
                "policy state unreadable: starting afresh", path=str(self.path), error=repr(exc)
            )
            return None
        why = _mismatch(doc, policy.name, type(initial).__name__)
        if why:
            log.warning("policy state not used: starting afresh", path=str(self.path), reason=why)
            return None
        if initial is None or not dataclasses.is_dataclass(initial):
            return initial
        try:
            state: S = TypeAdapter(type(initial)).validate_python(doc["state"])
        except ValidationError as exc:
            log.warning(
                "policy state invalid: starting afresh", path=str(self.path), error=str(exc)
            )
            return None
        log.info("policy state restored", path=str(self.path), saved_at=doc.get("saved_at"))
        return state


def _mismatch(doc: Any, policy: str, state_type: str) -> str | None:
    """Why a document is not a state for this policy, or ``None``."""
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return f"not a version {STATE_VERSION} state file"
    if doc.get("policy") != policy or doc.get("state_type") != state_type:
        return f"saved for policy {doc.get('policy')!r} ({doc.get('state_type')}), not {policy!r}"
    return None


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON holds)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = ["STATE_VERSION", "StateStore"]
