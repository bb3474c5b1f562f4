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
  capacity drops, so the group never picks a busy worker.
- Throttling (and an endpoint out of reach) is retried with exponential backoff
  and full jitter, a bounded number of times; then :class:`Unavailable`.
  ``ValidationError`` and access denials are :class:`ConfigError` (naming the
  action), other AWS errors :class:`Internal`.

boto3 is synchronous: each call runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from autoscaler.actuators.base import Actuator, Capacity, clamp
from fleet.errors import ConfigError, FleetError, Internal, Unavailable
from fleet.heartbeat import Heartbeat
from fleet.logging import get_logger

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef

    from autoscaler.config import Ec2ActuatorConfig

log = get_logger("autoscaler.actuators.ec2")

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "ResourceContention",  # another update of the same group in progress
        "ScalingActivityInProgress",
    }
)
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "ExpiredToken",
    }
)
PENDING_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})


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
        max_attempts: int = 6,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.group_name = group_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.instance_protection = instance_protection
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._client = client
        self._busy: dict[str, tuple[int, float]] = {}  # instance id -> (in_flight, busy fraction)
        self.retries = 0  # throttled or failed attempts that were retried

    @classmethod
    def from_config(cls, cfg: Ec2ActuatorConfig) -> Ec2Actuator:
        return cls(
            cfg.group_name,
            region=cfg.region,
            endpoint_url=cfg.endpoint_url,
            instance_protection=cfg.instance_protection,
            max_attempts=cfg.max_attempts,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
        )

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> AutoScalingClient:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # botocore's own retries off: ours are the bounded, logged ones
            self._client = boto3.client(
                "autoscaling",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
            )
        return self._client

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))

    async def call(self, action: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run one AWS call in a thread: retry throttling and transient errors
        with backoff, translate the rest to fleet errors."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        last: FleetError | None = None
        for attempt in range(self.max_attempts):
            try:
                return await asyncio.to_thread(fn, **kwargs)
            except ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                message = str(err.get("Message", "")) or str(exc)
                if code in THROTTLING_CODES or code in TRANSIENT_CODES:
                    last = Unavailable(f"{action}: {code}: {message}")
                elif code == "ValidationError":
                    raise ConfigError(f"{action} refused: {message}") from exc
                elif code in ACCESS_CODES:
                    raise ConfigError(
                        f"{action}: not allowed ({code}): grant autoscaling:{action} "
                        f"on group {self.group_name!r}: {message}"
                    ) from exc
                else:
                    raise Internal(f"{action}: {code or 'error'}: {message}") from exc
            except (
                EndpointConnectionError,
                ConnectTimeoutError,
                ReadTimeoutError,
                ConnectionClosedError,
            ) as exc:
                last = Unavailable(f"{action}: endpoint unreachable: {exc}")
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise ConfigError(f"{action}: no usable AWS credentials: {exc}") from exc
            except NoRegionError as exc:
                raise ConfigError(f"{action}: no AWS region configured") from exc
            except BotoCoreError as exc:
                raise Unavailable(f"{action}: {exc}") from exc
            if attempt + 1 < self.max_attempts:
                delay = self._backoff(attempt)
                self.retries += 1
                log.warning(
                    "AWS call failed; retrying",
                    action=action,
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                    error=last.message,
                )
                await self._sleep(delay)
        assert last is not None
        raise Unavailable(f"{last.message} (gave up after {self.max_attempts} attempts)")

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
        if self.instance_protection:
            await self._protect([i for i in st.in_service if i not in st.protected], True)
        return Capacity(in_service=len(st.in_service), pending=len(st.pending), desired=st.desired)

    def observe_heartbeat(self, beat: Heartbeat, received_at: float) -> None:
        if beat.instance_id:
            if beat.state == "stopped":
                self._busy.pop(beat.instance_id, None)
            else:
                self._busy[beat.instance_id] = (beat.in_flight, beat.busy_fraction)

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
        if self.instance_protection and applied < st.desired:
            order = self.scale_in_order(st)
            victims = order[: st.desired - applied]
            keep = [i for i in st.in_service if i not in victims and i not in st.protected]
            await self._protect(keep, True)
            await self._protect([i for i in victims if i in st.protected], False)
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


__all__ = ["Ec2Actuator", "GroupState"]
