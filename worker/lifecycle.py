"""A worker's lifecycle on a fleet: waiting for its broker at boot, and its
side of scale-in on EC2 Auto Scaling.

**Boot.** A worker may start before its broker answers (a fleet applied in one
go, a broker being replaced). :class:`BrokerWait` connects with capped
exponential backoff and jitter, logging each failed attempt with the delay
before the next (never the password), for as long as the worker's
``broker_wait_timeout`` allows (no limit by default)::

    wait = BrokerWait(url, backoff=Backoff(initial=0.5, cap=30), timeout=None)
    await wait.connect(transport)      # wait.status says what it waits for meanwhile

Only what retrying cannot fix ends the wait at once: credentials the broker
refuses (:class:`BrokerRefused`) and bad settings such as a malformed URL
(:class:`~fleet.errors.ConfigError`). The wait running out raises
:class:`BrokerUnreachable`.

**Scale-in.** When the group decides an instance goes, it moves it into ``Terminating:Wait``
(the termination lifecycle hook, ``deploy/terraform/worker.tf``) and the
instance metadata's *target lifecycle state* turns ``Terminated``. The worker
notices (or gets SIGTERM), drains, and then calls ``CompleteLifecycleAction``
so the instance goes at once instead of when the hook times out::

    watcher = LifecycleWatcher.from_env()          # None when not on a hooked group
    if watcher is not None:
        await watcher.wait_for_termination()       # polls IMDSv2
        await drain()
        await watcher.complete()                   # CONTINUE

The metadata service is read with IMDSv2 (a session token from
``PUT /latest/api/token``, then ``GET`` with the token header) and short
timeouts. ``CompleteLifecycleAction`` runs boto3 in a thread; throttling,
transient failures and an unreachable API are retried by botocore itself
(:mod:`fleet.aws`: its ``standard`` retry mode, ``max_attempts`` attempts in
all). What still fails raises a fleet error: ``ConfigError`` for missing
permissions or credentials, ``Unavailable`` when the API cannot be reached or
keeps throttling, ``Internal`` when there is no lifecycle action to complete.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import aiohttp

from fleet import aws
from fleet.errors import ConfigError, FleetError, Internal, Unavailable
from fleet.logging import get_logger
from fleet.redact import MASK, redact_text, redact_url
from fleet.transport import Transport

log = get_logger(__name__)

DEFAULT_METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
TARGET_STATE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
TERMINATED = "Terminated"

ENV_HOOK = "FLEET_LIFECYCLE_HOOK"
ENV_GROUP = "FLEET_ASG_NAME"
ENV_REGION = "AWS_REGION"
ENV_REGION_FALLBACK = "AWS_DEFAULT_REGION"
# botocore's own setting for the metadata endpoint; honoured here too.
ENV_METADATA_URL = "AWS_EC2_METADATA_SERVICE_ENDPOINT"

_TOKEN_TTL_S = 21600
_TOKEN_REFRESH_MARGIN_S = 60.0
_IMDS_TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)

_RESULTS = frozenset({"CONTINUE", "ABANDON"})


class _AutoScalingClient(Protocol):
    def complete_lifecycle_action(self, **kwargs: Any) -> Mapping[str, Any]: ...


class LifecycleWatcher:
    """Watches this instance's target lifecycle state and completes the
    termination lifecycle hook once the worker has drained."""

    def __init__(
        self,
        *,
        hook_name: str,
        group_name: str,
        region: str | None = None,
        metadata_url: str = DEFAULT_METADATA_URL,
        poll_interval: float = 5.0,
        autoscaling_client: object | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        retry_mode: aws.RetryMode = "standard",
    ) -> None:
        """``max_attempts``: attempts of ``CompleteLifecycleAction`` in all,
        made by botocore's ``retry_mode``. ``backoff_base`` and
        ``backoff_max`` are accepted for older callers and ignored: botocore's
        retry mode sets the backoff. ``autoscaling_client``: a client to use
        as it is (its own retry configuration applies)."""
        if not hook_name:
            raise ConfigError("lifecycle hook name is empty")
        if not group_name:
            raise ConfigError("Auto Scaling group name is empty")
        if poll_interval <= 0:
            raise ConfigError(f"poll_interval must be positive, got {poll_interval}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {max_attempts}")
        self.hook_name = hook_name
        self.group_name = group_name
        self.region = region
        self.metadata_url = metadata_url.rstrip("/")
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_mode: aws.RetryMode = retry_mode
        self._client = cast("_AutoScalingClient | None", autoscaling_client)
        self._token: str | None = None
        self._token_expires = 0.0
        self._instance_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LifecycleWatcher | None:
        """A watcher configured from ``FLEET_LIFECYCLE_HOOK``, ``FLEET_ASG_NAME``
        and ``AWS_REGION``; ``None`` when the hook or the group is not set (not
        running in a group with a termination hook)."""
        env = os.environ if env is None else env
        hook = env.get(ENV_HOOK, "").strip()
        group = env.get(ENV_GROUP, "").strip()
        if not hook or not group:
            if hook or group:
                log.warning(
                    "lifecycle.incomplete_config",
                    hook=hook or None,
                    group=group or None,
                    hint=f"set both {ENV_HOOK} and {ENV_GROUP}",
                )
            return None
        region = env.get(ENV_REGION) or env.get(ENV_REGION_FALLBACK) or None
        metadata_url = env.get(ENV_METADATA_URL) or DEFAULT_METADATA_URL
        return cls(hook_name=hook, group_name=group, region=region, metadata_url=metadata_url)

    # ------------------------------------------------------------------
    # Instance metadata (IMDSv2)
    # ------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        # trust_env=False: the metadata service is never reached through a proxy.
        return aiohttp.ClientSession(timeout=_IMDS_TIMEOUT, trust_env=False)

    async def _fetch_token(self, session: aiohttp.ClientSession) -> str:
        now = time.monotonic()
        if self._token is not None and now < self._token_expires:
            return self._token
        url = self.metadata_url + TOKEN_PATH
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(_TOKEN_TTL_S)}
        try:
            async with session.put(url, headers=headers) as resp:
                if resp.status != 200:
                    raise Unavailable(f"instance metadata token: HTTP {resp.status}")
                token = (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"instance metadata service unreachable at {url}: {exc!r}") from exc
        if not token:
            raise Unavailable("instance metadata service returned an empty token")
        self._token = token
        self._token_expires = now + _TOKEN_TTL_S - _TOKEN_REFRESH_MARGIN_S
        return token

    async def _get(self, path: str) -> str | None:
        """GET a metadata path; ``None`` on 404 (the item does not exist)."""
        url = self.metadata_url + path
        async with self._session() as session:
            for attempt in (1, 2):
                token = await self._fetch_token(session)
                try:
                    async with session.get(
                        url, headers={"X-aws-ec2-metadata-token": token}
                    ) as resp:
                        if resp.status == 401 and attempt == 1:
                            # The token expired or the service restarted: get a new one.
                            self._token = None
                            continue
                        if resp.status == 404:
                            return None
                        if resp.status != 200:
                            raise Unavailable(f"instance metadata {path}: HTTP {resp.status}")
                        return (await resp.text()).strip()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise Unavailable(f"instance metadata {path} unreachable: {exc!r}") from exc
        raise Unavailable(f"instance metadata {path}: token rejected twice")

    async def instance_id(self) -> str:
        """This instance's id (cached after the first call)."""
        if self._instance_id is None:
            value = await self._get(INSTANCE_ID_PATH)
            if not value:
                raise Unavailable("instance metadata has no instance-id")
            self._instance_id = value
        return self._instance_id

    async def target_lifecycle_state(self) -> str | None:
        """The Auto Scaling target lifecycle state (``InService``, ``Terminated``,
        ``Warmed:Stopped``...), or ``None`` when the instance is not in a group."""
        return await self._get(TARGET_STATE_PATH)

    async def wait_for_termination(self) -> None:
        """Return once the target lifecycle state is ``Terminated``.

        Polls every ``poll_interval`` seconds. A metadata service that cannot be
        reached is logged and polled again: a transient failure must not make
        a worker leave. Cancel the task to stop watching."""
        failures = 0
        last_state: str | None = None
        while True:
            try:
                state = await self.target_lifecycle_state()
            except Unavailable as exc:
                failures += 1
                if failures == 1 or failures % 12 == 0:
                    log.warning(
                        "lifecycle.metadata_unavailable", error=exc.message, failures=failures
                    )
            else:
                failures = 0
                if state != last_state:
                    log.info("lifecycle.target_state", state=state, group=self.group_name)
                    last_state = state
                if state == TERMINATED:
                    return
            await asyncio.sleep(self.poll_interval)

    async def is_terminating(self) -> bool:
        """Whether the group is taking this instance out (for the SIGTERM path:
        complete the hook only when there is one to complete)."""
        try:
            return await self.target_lifecycle_state() == TERMINATED
        except Unavailable as exc:
            log.warning("lifecycle.metadata_unavailable", error=exc.message)
            return False

    # ------------------------------------------------------------------
    # CompleteLifecycleAction
    # ------------------------------------------------------------------

    def _autoscaling(self) -> _AutoScalingClient:
        if self._client is None:
            try:
                import boto3
            except ImportError as exc:
                raise ConfigError(
                    "boto3 is needed to complete lifecycle actions: install inference-fleet[aws]"
                ) from exc
            config = aws.client_config(
                max_attempts=self.max_attempts,
                mode=self.retry_mode,
                connect_timeout=3,
                read_timeout=10,
            )
            client = boto3.client("autoscaling", region_name=self.region, config=config)
            aws.on_retry(client, self._retried)
            self._client = cast("_AutoScalingClient", client)
        return self._client

    @staticmethod
    def _retried(_operation: str, attempt: int) -> None:
        log.warning("lifecycle.complete_retry", attempt=attempt)

    async def complete(self, result: str = "CONTINUE") -> None:
        """Complete this instance's termination lifecycle action.

        ``result`` is ``CONTINUE`` (terminate now) or ``ABANDON``. Throttling and
        transient API failures are retried by botocore, up to ``max_attempts``
        attempts. Raises ``ConfigError`` (bad result, missing permission or
        credentials), ``Unavailable`` (API unreachable or still throttling) or
        ``Internal`` (no lifecycle action in progress, or another API error)."""
        if result not in _RESULTS:
            raise ConfigError(
                f"lifecycle action result must be CONTINUE or ABANDON, got {result!r}"
            )
        instance_id = await self.instance_id()
        client = self._autoscaling()
        params: dict[str, str] = {
            "LifecycleHookName": self.hook_name,
            "AutoScalingGroupName": self.group_name,
            "LifecycleActionResult": result,
            "InstanceId": instance_id,
        }
        call = cast("Callable[..., Mapping[str, Any]]", client.complete_lifecycle_action)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(call, **params)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, instance_id) from exc
        log.info(
            "lifecycle.completed",
            instance_id=instance_id,
            hook=self.hook_name,
            group=self.group_name,
            result=result,
        )

    def _error(self, exc: Exception, instance_id: str) -> FleetError:
        """The fleet error for what ``CompleteLifecycleAction`` still failed
        with once botocore's retries were spent."""
        from botocore import exceptions as boto_errors

        code, message = aws.error_code(exc)
        if isinstance(
            exc,
            boto_errors.NoCredentialsError
            | boto_errors.PartialCredentialsError
            | boto_errors.NoRegionError,
        ):
            return ConfigError(f"cannot call Auto Scaling: {exc}")
        if not isinstance(exc, boto_errors.ClientError):
            if aws.is_transient(exc):
                return Unavailable(f"Auto Scaling API unreachable: {exc}")
            return Internal(f"CompleteLifecycleAction failed: {exc}")
        if code in aws.ACCESS_DENIED_CODES:
            return ConfigError(
                f"not allowed to complete lifecycle actions on {self.group_name}: {code}: {message}"
            )
        if code in aws.CREDENTIALS_CODES:
            return ConfigError(f"AWS credentials rejected: {code}: {message}")
        if code == "ValidationError":
            return Internal(
                f"no lifecycle action to complete for {instance_id} "
                f"(hook {self.hook_name}, group {self.group_name}): {message}"
            )
        if aws.is_transient(exc):
            return Unavailable(
                f"CompleteLifecycleAction still failing after {self.max_attempts} attempts: {code}"
            )
        return Internal(f"CompleteLifecycleAction failed: {code}: {message}")


# ----------------------------------------------------------------------
# Boot: waiting for the broker
# ----------------------------------------------------------------------

#: Broker client errors (aio-pika/aiormq, aiokafka) that mean the broker refused
#: the credentials: compared by class name along the error's causes, so that
#: no broker library is imported here.
CREDENTIAL_ERRORS = frozenset(
    {
        "ProbableAuthenticationError",
        "AuthenticationError",
        "AuthenticationFailedError",
        "AuthenticationMethodNotSupported",
        "SaslAuthenticationFailed",
    }
)


class BrokerUnreachable(Unavailable):
    """The broker could not be reached within the wait a worker allows itself."""


class BrokerRefused(ConfigError):
    """The broker refused the worker's credentials: retrying cannot help."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: the wait after failed attempt
    ``n`` is drawn between half and all of ``min(cap, initial * 2**(n-1))``, so
    workers started together do not retry in step."""

    initial: float = 0.5
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ConfigError(
                f"backoff needs 0 < initial <= cap, got initial={self.initial}, cap={self.cap}"
            )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (counted from 1)."""
        return min(self.cap, self.initial * 2.0 ** min(max(attempt, 1) - 1, 64))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + rng.random() * ceiling / 2


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def refused_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the broker refusing
    the credentials."""
    return any(
        cls.__name__ in CREDENTIAL_ERRORS for err in _causes(exc) for cls in type(err).__mro__
    )


def _scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (as written, and decoded), and
    every URL in it redacted."""
    password = urlsplit(url).password
    for secret in (password, unquote(password or "")) if password else ():
        text = text.replace(secret, MASK)
    return redact_text(text)


class BrokerWait:
    """Connects a transport at boot, retrying until the broker answers."""

    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        rng: random.Random | None = None,
        on_attempt: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``timeout``: seconds to wait in all (``None``: no limit).
        ``on_attempt`` is called with ``failed``, ``refused`` or ``connected``
        after each attempt. ``sleep`` and ``clock`` (default: the event loop's)
        are for tests."""
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"broker wait timeout must be positive, got {timeout}")
        self.url = url
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self._rng = rng or random.Random()
        self._on_attempt = on_attempt or (lambda _outcome: None)
        self._sleep = sleep
        self._clock = clock
        self.attempts = 0
        self.status: str | None = None  # what it waits for, while it waits

    async def connect(self, transport: Transport) -> None:
        """Return once ``transport`` is connected. Raises :class:`BrokerRefused`
        or :class:`~fleet.errors.ConfigError` at once, :class:`BrokerUnreachable`
        when the wait runs out; ``transport`` is closed on every failure and on
        cancellation (SIGTERM while waiting)."""
        clock = self._clock or asyncio.get_running_loop().time
        deadline = None if self.timeout is None else clock() + self.timeout
        try:
            while True:
                error = await self._attempt(transport)
                if error is None:
                    return
                delay = self.backoff.delay(self.attempts, self._rng)
                if deadline is not None:
                    delay = min(delay, deadline - clock())
                    if delay <= 0:
                        raise BrokerUnreachable(
                            f"broker {redact_url(self.url)} still unreachable after "
                            f"{self.timeout:g} s and {self.attempts} attempts: {error}"
                        )
                self._waiting(error, delay)
                await self._sleep(delay)
        except BaseException:
            self.status = None
            await transport.close()
            raise

    async def _attempt(self, transport: Transport) -> str | None:
        """One attempt: ``None`` when connected, else why not (retriable)."""
        self.attempts += 1
        try:
            await transport.connect()
        except (FleetError, OSError) as exc:
            message = _scrub(exc.message if isinstance(exc, FleetError) else repr(exc), self.url)
            if refused_credentials(exc):
                self._on_attempt("refused")
                raise BrokerRefused(
                    f"broker {redact_url(self.url)} refused the credentials: {message}"
                ) from None
            if isinstance(exc, FleetError) and not exc.retriable:
                self._on_attempt("refused")
                raise
            self._on_attempt("failed")
            return message
        self._on_attempt("connected")
        if self.attempts > 1:
            log.info("broker.connected", broker=redact_url(self.url), attempts=self.attempts)
        self.status = None
        return None

    def _waiting(self, error: str, delay: float) -> None:
        self.status = (
            f"waiting for the broker (attempt {self.attempts} failed, next in {delay:.1f} s)"
        )
        log.warning(
            "broker.unreachable",
            broker=redact_url(self.url),
            attempt=self.attempts,
            next_delay_s=round(delay, 3),
            error=error,
        )


__all__ = [
    "CREDENTIAL_ERRORS",
    "Backoff",
    "BrokerRefused",
    "BrokerUnreachable",
    "BrokerWait",
    "LifecycleWatcher",
    "refused_credentials",
]
