"""The control loop: signals → policy → actuator, once per poll interval.

Each poll logs exactly one structured line, ``autoscaler.decision``, with the
decision, its reasons and the signals it was made from.

The policy's state is kept across restarts when a :class:`StateStore` is
given (``state_file`` in the configuration): read at start, written after
every poll. The state kept is the one the policy settles on once the actuator
has answered (:meth:`Policy.settle`), so a change that was refused or clamped
to nothing starts no cooldown. A change the actuator clamped to no change at
all (the group's maximum) is not asked for again for ``ceiling_recheck_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from autoscaler.actuators.base import Actuator
from autoscaler.config import AutoscalerConfig
from autoscaler.factory import build_actuator, build_policy
from autoscaler.metrics import AutoscalerMetrics, CloudWatchPublisher, MetricsServer
from autoscaler.signals import Signals
from autoscaler.state_store import StateStore
from autoscaler.types import Decision, Policy, Snapshot
from fleet.errors import FleetError
from fleet.logging import get_logger
from fleet.transport import connect
from fleet.transport.base import Transport

log = get_logger("autoscaler.loop")

CEILING_RECHECK_S = 300.0
"""How long a capacity the actuator clamped to no change is not asked for again."""


class Autoscaler:
    """One autoscaler: ``await start()``, then ``run_once()`` per poll or
    ``run(stop_event)``; ``await close()`` at the end."""

    def __init__(
        self,
        *,
        policy: Policy[Any],
        actuator: Actuator,
        signals: Signals,
        poll_interval_s: float,
        metrics: AutoscalerMetrics | None = None,
        server: MetricsServer | None = None,
        cloudwatch: CloudWatchPublisher | None = None,
        transport: Transport | None = None,
        on_decision: Callable[[Snapshot, Decision], None] | None = None,
        state_store: StateStore | None = None,
        ceiling_recheck_s: float = CEILING_RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.transport = transport  # closed with the autoscaler when given
        self.on_decision = on_decision  # called after each poll that reached the policy
        self.actuator = actuator
        self.signals = signals
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics if metrics is not None else AutoscalerMetrics()
        self.server = server
        self.cloudwatch = cloudwatch
        self.clock = clock
        self.state_store = state_store
        self.ceiling_recheck_s = ceiling_recheck_s
        self._ceiling: tuple[int, float] | None = None  # (capacity clamped at, when)
        self.state: Any = policy.initial_state()
        if state_store is not None:
            saved = state_store.load(policy)
            if saved is not None:
                self.state = saved
        self.last_snapshot: Snapshot | None = None
        self.last_decision: Decision | None = None
        self.decisions = 0
        self._started = False
        signals.add_listener(actuator.observe_heartbeat)

    async def start(self) -> None:
        if self._started:
            return
        await self.actuator.start()
        await self.signals.start()
        if self.server is not None:
            await self.server.start()
        self._started = True

    async def close(self) -> None:
        self._started = False
        with contextlib.suppress(FleetError):
            await self.signals.close()
        if self.server is not None:
            await self.server.close()
        await self.actuator.close()
        if self.transport is not None:
            await self.transport.close()

    async def __aenter__(self) -> Autoscaler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run_once(self) -> Decision:
        """Read the signals, decide, apply a change of desired capacity, log one
        line and update the metrics. Returns the decision as applied."""
        await self.start()
        try:
            capacity = await self.actuator.capacity()
        except FleetError as exc:
            return self._capacity_unreadable(exc)
        snapshot = await self.signals.collect(capacity)
        before = self.state
        decision, after = self.policy.decide(snapshot, before)
        final, error = await self._apply(snapshot, decision)
        self.state = self.policy.settle(snapshot, decision, final.desired, before, after)
        if self.actuator.sizes_warm_pool:
            await self._size_warm_pool(snapshot, final)
        if self.state_store is not None:
            await asyncio.to_thread(self.state_store.save, self.policy, self.state)
        self._log(snapshot, final, error)
        self.metrics.observe(snapshot, final)
        if self.cloudwatch is not None:
            await self.cloudwatch.publish(snapshot, final)
        self.last_snapshot = snapshot
        self._record(final)
        if self.on_decision is not None:
            self.on_decision(snapshot, final)
        return final

    def _record(self, decision: Decision) -> None:
        self.last_decision = decision
        self.decisions += 1

    def _capacity_unreadable(self, exc: FleetError) -> Decision:
        """Without capacity there is nothing to decide from: hold, say why."""
        self.metrics.errors.labels(stage="capacity").inc()
        prev = self.last_decision.desired if self.last_decision is not None else 0
        decision = Decision(
            desired=prev, direction="hold", reasons=(f"capacity unreadable: {exc.message}",)
        )
        log.error(
            "autoscaler.decision",
            desired=decision.desired,
            direction=decision.direction,
            reasons=list(decision.reasons),
            backlog=None,
            arrival_rate=None,
            in_service=None,
            pending=None,
        )
        self.metrics.decisions.labels(direction="hold").inc()
        self._record(decision)
        return decision

    async def _apply(self, snapshot: Snapshot, decision: Decision) -> tuple[Decision, str | None]:
        """Ask the actuator for a changed capacity; the decision as applied
        (clamped, or held when it failed) and the error, if any."""
        reasons = tuple(decision.reasons)
        applied = decision.desired
        error: str | None = None
        ceiling = self._known_ceiling(snapshot, decision)
        if ceiling is not None:
            applied = snapshot.desired
            reasons = (*reasons, f"at the actuator's ceiling {ceiling}: not asked again yet")
        elif decision.desired != snapshot.desired:
            try:
                applied = await self.actuator.set_desired(decision.desired, reasons)
            except FleetError as exc:
                self.metrics.errors.labels(stage="actuator").inc()
                error = f"{type(exc).__name__}: {exc.message}"
                applied = snapshot.desired
                reasons = (*reasons, f"not applied: {error}")
            else:
                if applied != decision.desired:
                    reasons = (*reasons, f"clamped from {decision.desired} to {applied}")
                if applied < decision.desired and applied <= snapshot.desired:
                    self._ceiling = (applied, self.clock())
        direction = decision.direction
        if (
            applied == snapshot.desired
            and direction != "hold"
            and decision.desired != snapshot.desired
        ):
            direction = "hold"  # clamped or failed to no change at all
        return Decision(desired=applied, direction=direction, reasons=reasons), error

    def _known_ceiling(self, snapshot: Snapshot, decision: Decision) -> int | None:
        """The ceiling the actuator clamped a step-up to lately, when this
        decision asks past it again from it; else ``None``."""
        if self._ceiling is None or decision.desired <= snapshot.desired:
            return None
        ceiling, at = self._ceiling
        if self.clock() - at >= self.ceiling_recheck_s or snapshot.desired < ceiling:
            self._ceiling = None
            return None
        return ceiling

    async def _size_warm_pool(self, snapshot: Snapshot, final: Decision) -> None:
        """Keep the policy's next scale-out step ready in the warm pool; a
        refusal is logged and counted, never fatal."""
        want = self.policy.warm_pool(snapshot, self.state, final.desired)
        try:
            size = await self.actuator.size_warm_pool(want)
        except FleetError as exc:
            self.metrics.errors.labels(stage="actuator").inc()
            log.warning("warm pool not sized", wanted=want, error=f"{type(exc).__name__}: {exc}")
            return
        if size is not None:
            self.metrics.warm_pool_size.set(size)

    def _log(self, snapshot: Snapshot, final: Decision, error: str | None) -> None:
        """The one ``autoscaler.decision`` line of a poll."""
        fields: dict[str, Any] = {
            "desired": final.desired,
            "direction": final.direction,
            "reasons": list(final.reasons),
            "backlog": snapshot.backlog,
            "arrival_rate": None
            if snapshot.arrival_rate is None
            else round(snapshot.arrival_rate, 3),
            "in_service": snapshot.in_service,
            "pending": snapshot.pending,
            "warm": snapshot.warm,
            "previous_desired": snapshot.desired,
            "policy": self.policy.name,
        }
        if error is not None:
            log.error("autoscaler.decision", **fields)
        else:
            log.info("autoscaler.decision", **fields)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Poll every ``poll_interval_s`` (measured start to start) until
        ``stop_event`` is set. A failed poll is logged and the next one runs."""
        await self.start()
        while not stop_event.is_set():
            began = self.clock()
            try:
                await self.run_once()
            except Exception:
                self.metrics.errors.labels(stage="poll").inc()
                log.exception("autoscaler poll failed")
            delay = max(0.0, self.poll_interval_s - (self.clock() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=delay)


async def from_config(cfg: AutoscalerConfig) -> Autoscaler:
    """Build (not start) the autoscaler an :class:`AutoscalerConfig` describes:
    the policy and the actuator its kinds name, a connected transport."""
    policy = build_policy(cfg.policy)
    actuator = build_actuator(cfg)
    transport = connect(cfg.broker)
    await transport.connect()
    signals = Signals(
        transport,
        cfg.models,
        per_instance_rps=cfg.per_instance_rps,
        arrival_smoothing_s=cfg.arrival_smoothing_s,
        min_busy_fraction=cfg.min_busy_fraction,
        declare_queues=cfg.declare_queues,
    )
    metrics = AutoscalerMetrics()
    store = StateStore(cfg.state_file) if cfg.state_file is not None else None
    return Autoscaler(
        state_store=store,
        policy=policy,
        actuator=actuator,
        signals=signals,
        poll_interval_s=cfg.poll_interval_s,
        metrics=metrics,
        server=_server(cfg, metrics),
        cloudwatch=_cloudwatch(cfg),
        transport=transport,
    )


def _server(cfg: AutoscalerConfig, metrics: AutoscalerMetrics) -> MetricsServer | None:
    if not cfg.metrics.enabled:
        return None
    return MetricsServer(metrics, host=cfg.metrics.host, port=cfg.metrics.port)


def _cloudwatch(cfg: AutoscalerConfig) -> CloudWatchPublisher | None:
    if not cfg.metrics.cloudwatch_namespace:
        return None
    region = cfg.metrics.cloudwatch_region or cfg.actuator.aws_region() or "us-east-1"
    return CloudWatchPublisher(
        cfg.metrics.cloudwatch_namespace,
        region=region,
        endpoint_url=cfg.metrics.cloudwatch_endpoint_url,
        dimensions=cfg.metrics.cloudwatch_dimensions,
    )


__all__ = ["Autoscaler", "from_config"]
