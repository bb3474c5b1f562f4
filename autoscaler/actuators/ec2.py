"""``ec2``: the desired capacity of an EC2 Auto Scaling Group, with boto3.

- Capacity is read from ``DescribeAutoScalingGroups``: instances ``InService``
  (and healthy) are in service; ``Pending*`` are pending.
- ``SetDesiredCapacity`` is called with ``HonorCooldown=False`` (the
  autoscaler's own cooldowns are the ones that count), clamped to the group's
  own ``MinSize``/``MaxSize`` as read just before: AWS would refuse a value
  outside them, and an emulator may not.
- With ``instance_protection`` on, in-service instances are protected from
  scale-in, and on a scale-in the ones to go (booting ones first, then the
  least busy by their workers' heartbeats) are unprotected just before the
  capacity drops, so the group never picks a busy worker. How many go is
  counted from the instances the group has (in service and booting), not
  from its desired capacity, which may already be lower while a termination
  is under way; the ones chosen stay unprotected until they are gone (a poll
  in between does not protect them again). A heartbeat names its instance by
  ``instance_id``, or by a worker id that is an EC2 instance id.
- Throttling, transient errors and an endpoint out of reach are retried by
  botocore itself (:mod:`fleet.aws`: its ``standard`` or ``adaptive`` retry
  mode, ``max_attempts`` attempts in all); what still fails is
  :class:`Unavailable`. ``ValidationError`` and access denials are
  :class:`ConfigError` (naming the action), other AWS errors :class:`Internal`.

boto3 is synchronous: each call runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import Field

from autoscaler.actuators.base import Actuator, ActuatorConfigBase, Capacity, clamp
from autoscaler.registry import ActuatorContext, ActuatorSpec
from fleet import aws
from fleet.errors import ConfigError, FleetError, Internal, Unavailable
from fleet.heartbeat import Heartbeat
from fleet.logging import get_logger

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef

log = get_logger("autoscaler.actuators.ec2")

T = TypeVar("T")

PENDING_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})
# Warm-pool instances prepared and ready to start (a warm start, not a cold boot).
WARM_READY = frozenset({"Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated"})
BUSY_CODES = frozenset({"ResourceContention", "ScalingActivityInProgress"})
"""Another change of the same group is in progress: the next poll tries again."""
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")


class Ec2ActuatorConfig(ActuatorConfigBase):
    """``[actuator] kind = "ec2"``: an EC2 Auto Scaling Group's desired capacity."""

    kind: Literal["ec2"]
    group_name: str = Field(min_length=1, max_length=255)
    """The Auto Scaling Group's name."""
    region: str = Field(default="us-east-1", min_length=1)
    """The AWS region of the group."""
    endpoint_url: str | None = None
    """Another Auto Scaling endpoint (a local emulator in tests); ``None``: AWS."""
    instance_protection: bool = False
    """Protect in-service instances from scale-in and unprotect only the ones
    chosen to go (the least busy by their heartbeats), so the group never
    terminates a worker that is busy."""
    max_attempts: int = Field(default=aws.DEFAULT_MAX_ATTEMPTS, ge=1, le=20)
    """Attempts per AWS call (the first included) when throttled, on a
    transient error or when the endpoint is unreachable."""
    retry_mode: aws.RetryMode = "standard"
    """botocore's retry mode: ``standard`` (exponential backoff with full
    jitter) or ``adaptive`` (the same, plus client-side rate limiting)."""
    backoff_base_s: float = Field(default=0.2, gt=0, le=30)
    """Accepted for older files and ignored: botocore's retry mode sets the
    backoff."""
    backoff_max_s: float = Field(default=5.0, gt=0, le=120)
    """Accepted for older files and ignored: botocore's retry mode sets the
    backoff."""
    warm_pool: Annotated[int, Field(ge=0)] | Literal["auto"] | None = None
    """The group's warm pool: ``None`` leaves it as it is (Terraform sizes it);
    a number keeps that many instances ready (its minimum size); ``"auto"``
    keeps the policy's next scale-out step ready, following the fleet's size
    (the default policy: what a surge of ``surge_ratio`` times today's load
    would add, or what the last learned surge needed), never below the pool's
    size when the autoscaler started. The pool's other settings are kept. Needs
    ``autoscaling:PutWarmPool`` and ``autoscaling:DescribeWarmPool``."""

    def aws_region(self) -> str | None:
        return self.region


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupState:
    """What one ``DescribeAutoScalingGroups`` said about the group."""

    min_size: int
    max_size: int
    desired: int
    in_service: tuple[str, ...]  # instance ids
    pending: tuple[str, ...]
    protected: frozenset[str]


class Ec2Actuator(Actuator):
    kind = "ec2"

    def __init__(
        self,
        group_name: str,
        *,
        client: AutoScalingClient | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        instance_protection: bool = False,
        max_attempts: int = aws.DEFAULT_MAX_ATTEMPTS,
        retry_mode: aws.RetryMode = "standard",
        warm_pool: int | Literal["auto"] | None = None,
    ) -> None:
        """``client``: an Auto Scaling client to use as it is (its own retry
        configuration applies); by default one is built with
        :func:`fleet.aws.client_config`."""
        self.group_name = group_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.instance_protection = instance_protection
        self.max_attempts = max(1, max_attempts)
        self.retry_mode: aws.RetryMode = retry_mode
        self._client: AutoScalingClient | None = None
        self._busy: dict[str, tuple[int, float]] = {}  # instance id -> (in_flight, busy fraction)
        self._leaving: set[str] = set()  # unprotected to go; not protected again
        self.retries = 0  # attempts botocore retried (throttled, transient, unreachable)
        self.warm_pool = warm_pool
        self._pool: dict[str, Any] | None = None  # the warm pool's configuration, as last read
        self._pool_known = False  # whether the group has been asked for its warm pool
        self._pool_floor = 0  # "auto" never goes below the pool's size at start
        if client is not None:
            self._use(client)

    @classmethod
    def from_config(cls, cfg: Ec2ActuatorConfig) -> Ec2Actuator:
        return cls(
            cfg.group_name,
            region=cfg.region,
            endpoint_url=cfg.endpoint_url,
            instance_protection=cfg.instance_protection,
            max_attempts=cfg.max_attempts,
            retry_mode=cfg.retry_mode,
            warm_pool=cfg.warm_pool,
        )

    # ------------------------------------------------------------------ plumbing
    def _use(self, client: AutoScalingClient) -> AutoScalingClient:
        aws.on_retry(client, self._retried)
        self._client = client
        return client

    def _retried(self, operation: str, attempt: int) -> None:
        self.retries += 1
        log.warning("AWS call retried", action=operation, attempt=attempt)

    @property
    def client(self) -> AutoScalingClient:
        if self._client is None:
            import boto3

            return self._use(
                boto3.client(
                    "autoscaling",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=aws.client_config(max_attempts=self.max_attempts, mode=self.retry_mode),
                )
            )
        return self._client

    async def call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run one AWS call in a thread (botocore retries what is worth
        retrying) and translate what still fails to a fleet error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(action, exc) from exc

    def _error(self, action: str, exc: Exception) -> FleetError:
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )

        code, message = aws.error_code(exc)
        gave_up = f"(gave up after {self.max_attempts} attempts)"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ConfigError(f"{action}: no usable AWS credentials: {exc}")
        if isinstance(exc, NoRegionError):
            return ConfigError(f"{action}: no AWS region configured")
        if not isinstance(exc, ClientError):
            if aws.is_transient(exc):
                return Unavailable(f"{action}: endpoint unreachable: {exc} {gave_up}")
            return Unavailable(f"{action}: {exc}")
        if code == "ValidationError":
            return ConfigError(f"{action} refused: {message}")
        if code in aws.ACCESS_DENIED_CODES or code in aws.CREDENTIALS_CODES:
            return ConfigError(
                f"{action}: not allowed ({code}): grant autoscaling:{action} "
                f"on group {self.group_name!r}: {message}"
            )
        if aws.is_transient(exc):
            return Unavailable(f"{action}: {code}: {message} {gave_up}")
        if code in BUSY_CODES:
            return Unavailable(f"{action}: {code}: {message}")
        return Internal(f"{action}: {code or 'error'}: {message}")

    # ------------------------------------------------------------------ the group
    async def describe(self) -> GroupState:
        resp = await self.call(
            "DescribeAutoScalingGroups",
            self.client.describe_auto_scaling_groups,
            AutoScalingGroupNames=[self.group_name],
        )
        groups = resp.get("AutoScalingGroups", [])
        if not groups:
            raise ConfigError(
                f"Auto Scaling Group {self.group_name!r} does not exist in {self.region}"
            )
        return self._state(groups[0])

    @staticmethod
    def _state(group: AutoScalingGroupTypeDef) -> GroupState:
        in_service: list[str] = []
        pending: list[str] = []
        protected: set[str] = set()
        for inst in group.get("Instances", []):
            iid = inst["InstanceId"]
            state = inst.get("LifecycleState", "")
            if state == "InService" and inst.get("HealthStatus", "Healthy") == "Healthy":
                in_service.append(iid)
            elif state in PENDING_STATES:
                pending.append(iid)
            if inst.get("ProtectedFromScaleIn"):
                protected.add(iid)
        return GroupState(
            min_size=int(group["MinSize"]),
            max_size=int(group["MaxSize"]),
            desired=int(group["DesiredCapacity"]),
            in_service=tuple(sorted(in_service)),
            pending=tuple(sorted(pending)),
            protected=frozenset(protected),
        )

    async def _protect(self, ids: list[str], protect: bool) -> None:
        if not ids:
            return
        for i in range(0, len(ids), 50):  # the API takes at most 50 ids per call
            await self.call(
                "SetInstanceProtection",
                self.client.set_instance_protection,
                AutoScalingGroupName=self.group_name,
                InstanceIds=ids[i : i + 50],
                ProtectedFromScaleIn=protect,
            )

    # ------------------------------------------------------------------ Actuator
    async def start(self) -> None:
        await self.describe()  # fail early on a missing group or bad credentials

    async def capacity(self) -> Capacity:
        st = await self.describe()
        self._leaving &= {*st.in_service, *st.pending}  # the gone are gone
        if self.instance_protection:
            await self._protect(
                [i for i in st.in_service if i not in st.protected and i not in self._leaving],
                True,
            )
        warm = None
        if self.warm_pool is not None or not self._pool_known or self._pool is not None:
            warm = await self._warm_or_none()
        return Capacity(
            in_service=len(st.in_service), pending=len(st.pending), desired=st.desired, warm=warm
        )

    # ------------------------------------------------------------------ the warm pool
    async def _warm_or_none(self) -> int | None:
        """:meth:`_warm`, or ``None`` when the pool cannot be read (logged
        once: a role without ``autoscaling:DescribeWarmPool`` still scales)."""
        try:
            return await self._warm()
        except FleetError as exc:
            if not self._pool_known:
                log.warning("warm pool unreadable", group=self.group_name, error=str(exc))
            self._pool_known = True
            return None

    async def _warm(self) -> int | None:
        """Instances ready in the warm pool (stopped, running or hibernated,
        prepared); ``None`` when the group has no warm pool."""
        resp = await self.call(
            "DescribeWarmPool",
            self.client.describe_warm_pool,
            AutoScalingGroupName=self.group_name,
        )
        pool = resp.get("WarmPoolConfiguration")
        if not self._pool_known and pool:
            self._pool_floor = int(pool.get("MinSize") or 0)
        self._pool_known = True
        self._pool = dict(pool) if pool else None
        if self._pool is None:
            return None
        return sum(1 for i in resp.get("Instances", []) if i.get("LifecycleState") in WARM_READY)

    @property
    def sizes_warm_pool(self) -> bool:
        return self.warm_pool is not None

    async def size_warm_pool(self, n: int | None) -> int | None:
        """Keep ``n`` instances ready (the policy's suggestion, used when
        ``warm_pool`` is ``"auto"``; a fixed ``warm_pool`` wins). The pool's
        other settings are kept; a group without a pool gets one, stopped.
        Returns the minimum size set, ``None`` when it was already that."""
        if not self._pool_known:
            await self._warm()
        size = self.warm_pool
        if size == "auto":
            size = None if n is None else max(n, self._pool_floor)
        if size is None:
            return None
        pool = self._pool or {}
        if pool and int(pool.get("MinSize", 0)) == size:
            return None
        kwargs: dict[str, Any] = {"AutoScalingGroupName": self.group_name, "MinSize": size}
        for key in ("MaxGroupPreparedCapacity", "PoolState", "InstanceReusePolicy"):
            if pool.get(key) is not None:
                kwargs[key] = pool[key]
        kwargs.setdefault("PoolState", "Stopped")
        cap = kwargs.get("MaxGroupPreparedCapacity")
        if cap is not None and 0 <= int(cap) < size:
            # a cap below the minimum would be read as the minimum anyway
            kwargs["MaxGroupPreparedCapacity"] = size
        await self.call("PutWarmPool", self.client.put_warm_pool, **kwargs)
        self._pool = {**pool, **kwargs}
        log.info("warm pool sized", group=self.group_name, min_size=size, was=pool.get("MinSize"))
        return size

    def observe_heartbeat(self, beat: Heartbeat, received_at: float) -> None:
        iid = beat.instance_id
        if not iid and INSTANCE_ID.fullmatch(beat.worker_id):
            iid = beat.worker_id  # workers named after their instance
        if iid:
            if beat.state == "stopped":
                self._busy.pop(iid, None)
            else:
                self._busy[iid] = (beat.in_flight, beat.busy_fraction)

    def scale_in_order(self, st: GroupState) -> list[str]:
        """Instances in the order they should go: booting first, then the least
        busy in-service ones by their heartbeats."""

        def key(iid: str) -> tuple[int, float, str]:
            in_flight, busy = self._busy.get(iid, (0, 0.0))
            return (in_flight, busy, iid)

        return list(st.pending) + sorted(st.in_service, key=key)

    async def set_desired(self, n: int, reasons: tuple[str, ...] = ()) -> int:
        st = await self.describe()
        applied = clamp(n, st.min_size, st.max_size)
        if applied != n:
            log.warning(
                "desired capacity clamped to the group's bounds",
                group=self.group_name,
                asked=n,
                applied=applied,
                min_size=st.min_size,
                max_size=st.max_size,
            )
        if self.instance_protection:
            await self._choose_leaving(st, applied)
        await self.call(
            "SetDesiredCapacity",
            self.client.set_desired_capacity,
            AutoScalingGroupName=self.group_name,
            DesiredCapacity=applied,
            HonorCooldown=False,
        )
        log.info(
            "desired capacity set",
            group=self.group_name,
            previous=st.desired,
            desired=applied,
            reasons=list(reasons),
        )
        return applied

    async def _choose_leaving(self, st: GroupState, applied: int) -> None:
        """Unprotect exactly the instances to go for ``applied`` (counted from
        the instances the group has) and protect the rest in service."""
        members = len(st.in_service) + len(st.pending)
        if applied >= members:
            self._leaving.clear()  # none need go: the next poll protects them again
            return
        victims = self.scale_in_order(st)[: members - applied]
        keep = [i for i in st.in_service if i not in victims and i not in st.protected]
        await self._protect(keep, True)
        await self._protect([i for i in victims if i in st.protected], False)
        self._leaving = set(victims)


def _build(cfg: Ec2ActuatorConfig, _context: ActuatorContext) -> Ec2Actuator:
    return Ec2Actuator.from_config(cfg)


SPEC = ActuatorSpec(name="ec2", config=Ec2ActuatorConfig, build=_build)

__all__ = ["SPEC", "Ec2Actuator", "Ec2ActuatorConfig", "GroupState"]
