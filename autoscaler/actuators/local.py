"""``local``: ``fleet worker`` processes on this machine.

- Scale-out starts ``<command> --models DIR --worker-id ID --http-port 0``
  with the broker URL in its environment (``FLEET_BROKER``), never on its
  command line, where ``ps`` would show the password to every user. A process
  is *pending* until a heartbeat with its worker id and state ``ready``
  arrives, then *in service*.
- Scale-in sends SIGTERM to the newest workers (booting ones first) so they
  drain: stop consuming, answer what they hold, ack, exit. One that has not
  exited after the grace period is killed (SIGKILL) with a warning; the broker
  then delivers its unacked requests again.
- A worker that exits unexpectedly is noticed, logged and counted out of
  service; like an Auto Scaling Group replacing an unhealthy instance, it is
  replaced to keep the desired capacity, with a backoff while workers keep
  dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import Field

from autoscaler.actuators.base import Actuator, ActuatorConfigBase, Capacity, clamp
from autoscaler.registry import ActuatorContext, ActuatorSpec
from fleet.errors import ConfigError, Unavailable
from fleet.heartbeat import Heartbeat
from fleet.logging import get_logger
from fleet.worker_command import releases_sigterm, worker_command, worker_launch

log = get_logger("autoscaler.actuators.local")

MAX_RESTART_BACKOFF_S = 60.0


class LocalActuatorConfig(ActuatorConfigBase):
    """``[actuator] kind = "local"``: ``fleet worker`` processes on this machine."""

    kind: Literal["local"]
    models_dir: Path
    """The model repository the workers serve (``--models``)."""
    command: list[str] = Field(default_factory=worker_command, min_length=1)
    """The worker command; ``--models``, ``--worker-id`` and ``--http-port 0``
    are appended, and the broker URL is in its environment as ``FLEET_BROKER``.
    Default: this interpreter's ``-m fleetctl worker``."""
    extra_args: list[str] = Field(default_factory=list)
    """More arguments appended after the standard ones."""
    max_workers: int = Field(default=4, ge=1, le=256)
    """Hard cap on worker processes (the local equivalent of a group's MaxSize)."""
    min_workers: int = Field(default=0, ge=0)
    """Floor on worker processes (the local equivalent of a group's MinSize)."""
    grace_period_s: float = Field(default=30.0, gt=0)
    """How long a worker sent SIGTERM may take to drain before it is killed."""
    log_dir: Path | None = None
    """Where each worker's output goes (``<worker_id>.log``); ``None``: inherited."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for the workers, e.g. ``{ FLEET_HEARTBEAT_INTERVAL = "1" }``."""
    restart_backoff_s: float = Field(default=1.0, ge=0)
    """Delay before a worker that died unexpectedly is replaced (doubles while
    workers keep dying, up to 60 s)."""


@dataclass(eq=False, slots=True)
class WorkerProcess:
    worker_id: str
    proc: asyncio.subprocess.Process
    started_at: float
    ready: bool = False
    stopping: bool = False  # SIGTERM sent by us
    log_file: IO[bytes] | None = None
    waiter: asyncio.Task[int] | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


class LocalActuator(Actuator):
    kind = "local"

    def __init__(
        self,
        *,
        broker: str,
        models_dir: Path,
        command: Sequence[str],
        extra_args: Sequence[str] = (),
        max_workers: int = 4,
        min_workers: int = 0,
        grace_period_s: float = 30.0,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        restart_backoff_s: float = 1.0,
        stop_on_close: bool = True,
        id_prefix: str | None = None,
    ) -> None:
        if not command:
            raise ConfigError("the worker command is empty")
        if min_workers > max_workers:
            raise ConfigError("min_workers is above max_workers")
        self.broker = broker
        self.models_dir = Path(models_dir)
        self.command = list(command)
        self.extra_args = list(extra_args)
        self.max_workers = max_workers
        self.min_workers = min_workers
        self.grace_period_s = grace_period_s
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.restart_backoff_s = restart_backoff_s
        self.stop_on_close = stop_on_close
        self.id_prefix = id_prefix or f"local-{uuid.uuid4().hex[:6]}"
        self._seq = itertools.count(1)
        self._desired = min_workers
        self.workers: list[WorkerProcess] = []  # oldest first, not yet stopping
        self._stopping: set[WorkerProcess] = set()
        self._stop_tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._deaths = 0  # unexpected exits in a row
        self._next_restart = 0.0
        self.unexpected_exits = 0
        self.killed = 0  # workers that needed SIGKILL
        self.stopped_by_sigterm: list[tuple[str, int]] = []  # (worker id, exit code)
        self._closed = False

    @classmethod
    def from_config(cls, cfg: LocalActuatorConfig, *, broker: str) -> LocalActuator:
        return cls(
            broker=broker,
            models_dir=cfg.models_dir,
            command=cfg.command,
            extra_args=cfg.extra_args,
            max_workers=cfg.max_workers,
            min_workers=cfg.min_workers,
            grace_period_s=cfg.grace_period_s,
            log_dir=cfg.log_dir,
            env=cfg.env,
            restart_backoff_s=cfg.restart_backoff_s,
        )

    # ------------------------------------------------------------------ processes
    async def _spawn(self) -> WorkerProcess:
        worker_id = f"{self.id_prefix}-{next(self._seq)}"
        launch = worker_launch(
            broker=self.broker,
            models=self.models_dir,
            worker_id=worker_id,
            http_port=0,
            command=self.command,
            extra=self.extra_args,
        )
        argv = launch.argv
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{worker_id}.log").open("ab")
        try:
            # the worker inherits SIGTERM blocked and unblocks it once its
            # handler is set: stopped while it boots, it exits 0, never -15
            with _sigterm_blocked(releases_sigterm(argv)):
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT if out is not None else None,
                    env={**os.environ, **self.env, **launch.env},
                    start_new_session=True,  # a terminal's Ctrl-C is ours to pass on
                )
        except OSError as exc:
            if out is not None:
                out.close()
            raise Unavailable(f"cannot start worker {argv[0]!r}: {exc}") from exc
        w = WorkerProcess(worker_id=worker_id, proc=proc, started_at=time.monotonic(), log_file=out)
        w.waiter = asyncio.get_running_loop().create_task(proc.wait())
        log.info("worker started", worker_id=worker_id, pid=proc.pid)
        return w

    def _reap(self) -> None:
        """Notice workers that exited without being asked to."""
        now = time.monotonic()
        for w in list(self.workers):
            if w.alive:
                continue
            self.workers.remove(w)
            self._close_log(w)
            self.unexpected_exits += 1
            self._deaths += 1
            delay = min(MAX_RESTART_BACKOFF_S, self.restart_backoff_s * 2 ** (self._deaths - 1))
            self._next_restart = now + delay
            log.warning(
                "worker exited unexpectedly; counted out of service",
                worker_id=w.worker_id,
                pid=w.pid,
                returncode=w.proc.returncode,
                was_ready=w.ready,
                replace_in_s=round(delay, 2),
            )

    @staticmethod
    def _close_log(w: WorkerProcess) -> None:
        if w.log_file is not None:
            w.log_file.close()
            w.log_file = None

    async def _stop(self, w: WorkerProcess) -> None:
        """SIGTERM, wait for the drain, SIGKILL past the grace period."""
        assert w.waiter is not None
        try:
            if w.alive:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
            try:
                rc = await asyncio.wait_for(asyncio.shield(w.waiter), self.grace_period_s)
            except TimeoutError:
                log.warning(
                    "worker did not exit within the grace period; killing it",
                    worker_id=w.worker_id,
                    pid=w.pid,
                    grace_period_s=self.grace_period_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                self.killed += 1
                rc = await w.waiter
            else:
                self.stopped_by_sigterm.append((w.worker_id, rc))
            log.info("worker stopped", worker_id=w.worker_id, pid=w.pid, returncode=rc)
        finally:
            self._stopping.discard(w)
            self._close_log(w)

    def _begin_stop(self, w: WorkerProcess) -> None:
        w.stopping = True
        self.workers.remove(w)
        self._stopping.add(w)
        task = asyncio.get_running_loop().create_task(self._stop(w))
        self._stop_tasks.add(task)
        task.add_done_callback(self._stop_tasks.discard)

    async def _reconcile(self) -> None:
        """Start or stop processes until the live ones match the desired count."""
        async with self._lock:
            self._reap()
            missing = self._desired - len(self.workers)
            if missing > 0:
                if self._deaths and time.monotonic() < self._next_restart:
                    return  # workers keep dying: wait for the backoff
                for _ in range(missing):
                    self.workers.append(await self._spawn())
            elif missing < 0:
                # newest first, booting ones before ready ones
                order = sorted(self.workers, key=lambda w: (w.ready, -w.started_at))
                for w in order[:-missing]:
                    log.info(
                        "stopping worker (SIGTERM)", worker_id=w.worker_id, pid=w.pid, ready=w.ready
                    )
                    self._begin_stop(w)

    # ------------------------------------------------------------------ Actuator
    def observe_heartbeat(self, beat: Heartbeat, received_at: float) -> None:
        for w in self.workers:
            if w.worker_id == beat.worker_id:
                if beat.state == "ready" and not w.ready:
                    w.ready = True
                    self._deaths = 0
                    log.info(
                        "worker ready",
                        worker_id=w.worker_id,
                        boot_s=round(time.monotonic() - w.started_at, 2),
                    )
                return

    async def capacity(self) -> Capacity:
        await self._reconcile()
        ready = sum(1 for w in self.workers if w.ready and w.alive)
        pending = sum(1 for w in self.workers if not w.ready and w.alive)
        return Capacity(in_service=ready, pending=pending, desired=self._desired)

    async def set_desired(self, n: int, reasons: tuple[str, ...] = ()) -> int:
        applied = clamp(n, self.min_workers, self.max_workers)
        if applied != n:
            log.warning(
                "desired worker count clamped",
                asked=n,
                applied=applied,
                max_workers=self.max_workers,
            )
        previous, self._desired = self._desired, applied
        if applied > previous:
            self._deaths = 0  # a deliberate scale-out starts at once
        await self._reconcile()
        log.info("desired workers set", previous=previous, desired=applied, reasons=list(reasons))
        return applied

    @property
    def stopping(self) -> int:
        """Workers sent SIGTERM that have not exited yet."""
        return len(self._stopping)

    async def wait_stopped(self) -> None:
        """Wait until every worker sent SIGTERM has exited."""
        while self._stop_tasks:
            await asyncio.gather(*list(self._stop_tasks), return_exceptions=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.stop_on_close:
            async with self._lock:
                for w in list(self.workers):
                    self._begin_stop(w)
            await self.wait_stopped()
        else:
            for w in self.workers:
                self._close_log(w)

    def status(self) -> dict[str, Any]:
        return {
            "desired": self._desired,
            "workers": [
                {"worker_id": w.worker_id, "pid": w.pid, "ready": w.ready, "alive": w.alive}
                for w in self.workers
            ],
            "stopping": self.stopping,
            "unexpected_exits": self.unexpected_exits,
            "killed": self.killed,
        }


@contextlib.contextmanager
def _sigterm_blocked(block: bool) -> Iterator[None]:
    """SIGTERM blocked in this thread while a child is started (when
    ``block``): the child inherits the mask across exec. A SIGTERM meant for
    this process meanwhile waits, and is delivered when the block ends."""
    if not block:
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _build(cfg: LocalActuatorConfig, context: ActuatorContext) -> LocalActuator:
    return LocalActuator.from_config(cfg, broker=context.broker)


SPEC = ActuatorSpec(name="local", config=LocalActuatorConfig, build=_build)

__all__ = ["SPEC", "LocalActuator", "LocalActuatorConfig", "WorkerProcess"]
