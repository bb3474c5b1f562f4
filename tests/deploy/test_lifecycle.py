"""The worker's scale-in path on EC2 Auto Scaling (worker/lifecycle.py).

The instance metadata service is faked by an aiohttp server on 127.0.0.1 that
speaks IMDSv2 (a token from PUT /latest/api/token is required on every GET).
``CompleteLifecycleAction`` is checked with botocore's Stubber (moto does not
implement it), and its retries by answering attempts just before they leave
the client, where botocore's own retry handler sees them.
"""

from __future__ import annotations

import asyncio
import socket
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.endpoint
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.stub import Stubber

from fleet import aws
from fleet.errors import ConfigError, Internal, Unavailable
from tests.aws_answers import answer, error_body
from worker.lifecycle import LifecycleWatcher

pytestmark = pytest.mark.deploy

INSTANCE_ID = "i-0123456789abcdef0"
HOOK = "fleet-worker-drain"
GROUP = "fleet-worker"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass
class FakeImds:
    """State of the fake metadata service: the states it will report, in order
    (the last one repeats), and what it was asked."""

    states: list[str] = field(default_factory=lambda: ["InService", "InService", "Terminated"])
    token: str = "token-1"
    token_requests: int = 0
    state_requests: int = 0
    unauthorized: int = 0
    url: str = ""

    def rotate_token(self) -> None:
        self.token = f"token-{self.token_requests + 1}-rotated"


def _app(imds: FakeImds) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        if TOKEN_TTL_HEADER not in request.headers:
            return web.Response(status=400, text="missing TTL header")
        imds.token_requests += 1
        return web.Response(text=imds.token)

    def authorized(request: web.Request) -> bool:
        ok = request.headers.get(TOKEN_HEADER) == imds.token
        if not ok:
            imds.unauthorized += 1
        return ok

    async def instance_id(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.Response(status=401)
        return web.Response(text=INSTANCE_ID)

    async def target_state(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.Response(status=401)
        index = min(imds.state_requests, len(imds.states) - 1)
        imds.state_requests += 1
        return web.Response(text=imds.states[index])

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get("/latest/meta-data/instance-id", instance_id)
    app.router.add_get("/latest/meta-data/autoscaling/target-lifecycle-state", target_state)
    return app


@pytest.fixture
async def imds() -> AsyncIterator[FakeImds]:
    state = FakeImds()
    server = TestServer(_app(state), host="127.0.0.1")
    await server.start_server()
    state.url = f"http://127.0.0.1:{server.port}"
    try:
        yield state
    finally:
        await server.close()


@pytest.fixture
def stubbed() -> Iterator[tuple[object, Stubber]]:
    client = boto3.client(
        "autoscaling",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stubber:
        yield client, stubber


def _watcher(imds: FakeImds, client: object | None = None, **kwargs: object) -> LifecycleWatcher:
    return LifecycleWatcher(
        hook_name=HOOK,
        group_name=GROUP,
        region="us-east-1",
        metadata_url=imds.url,
        poll_interval=0.01,
        autoscaling_client=client,
        backoff_base=0.001,
        backoff_max=0.01,
        **kwargs,  # type: ignore[arg-type]
    )


def _expected(result: str = "CONTINUE") -> dict[str, str]:
    return {
        "LifecycleHookName": HOOK,
        "AutoScalingGroupName": GROUP,
        "LifecycleActionResult": result,
        "InstanceId": INSTANCE_ID,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# Instance metadata
# ---------------------------------------------------------------------------


async def test_instance_id_with_imdsv2_token(imds: FakeImds) -> None:
    watcher = _watcher(imds)
    assert await watcher.instance_id() == INSTANCE_ID
    assert await watcher.instance_id() == INSTANCE_ID  # cached
    assert imds.token_requests == 1
    assert imds.unauthorized == 0


async def test_wait_for_termination_polls_until_terminated(imds: FakeImds) -> None:
    imds.states = ["InService", "InService", "InService", "Terminated"]
    watcher = _watcher(imds)
    await asyncio.wait_for(watcher.wait_for_termination(), timeout=10)
    assert imds.state_requests == 4
    assert imds.token_requests == 1  # the token is reused between polls


async def test_wait_for_termination_keeps_waiting_in_service(imds: FakeImds) -> None:
    imds.states = ["InService"]
    watcher = _watcher(imds)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watcher.wait_for_termination(), timeout=0.3)
    assert imds.state_requests >= 3


async def test_expired_token_is_renewed(imds: FakeImds) -> None:
    watcher = _watcher(imds)
    assert await watcher.target_lifecycle_state() == "InService"
    imds.rotate_token()  # the service forgets the watcher's token
    assert await watcher.target_lifecycle_state() == "InService"
    assert imds.unauthorized == 1
    assert imds.token_requests == 2


async def test_is_terminating(imds: FakeImds) -> None:
    imds.states = ["InService", "Terminated"]
    watcher = _watcher(imds)
    assert not await watcher.is_terminating()
    assert await watcher.is_terminating()


async def test_unreachable_metadata_is_unavailable_and_polling_goes_on() -> None:
    watcher = LifecycleWatcher(
        hook_name=HOOK,
        group_name=GROUP,
        metadata_url=f"http://127.0.0.1:{_free_port()}",
        poll_interval=0.01,
    )
    with pytest.raises(Unavailable):
        await watcher.instance_id()
    assert not await watcher.is_terminating()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watcher.wait_for_termination(), timeout=0.3)


# ---------------------------------------------------------------------------
# CompleteLifecycleAction
# ---------------------------------------------------------------------------


async def test_complete_sends_the_expected_request(
    imds: FakeImds, stubbed: tuple[object, Stubber]
) -> None:
    client, stubber = stubbed
    stubber.add_response("complete_lifecycle_action", {}, _expected())
    await _watcher(imds, client).complete()
    stubber.assert_no_pending_responses()


async def test_complete_abandon(imds: FakeImds, stubbed: tuple[object, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("complete_lifecycle_action", {}, _expected("ABANDON"))
    await _watcher(imds, client).complete("ABANDON")
    stubber.assert_no_pending_responses()


async def test_termination_then_complete(imds: FakeImds, stubbed: tuple[object, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("complete_lifecycle_action", {}, _expected())
    watcher = _watcher(imds, client)
    await asyncio.wait_for(watcher.wait_for_termination(), timeout=10)
    await watcher.complete()
    stubber.assert_no_pending_responses()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's retry delays, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=delays.append))
    return delays


_COMPLETED = (
    b'<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
    b"<CompleteLifecycleActionResult/><ResponseMetadata><RequestId>r</RequestId>"
    b"</ResponseMetadata></CompleteLifecycleActionResponse>"
)


def _answering(answers: list[tuple[int, bytes]], max_attempts: int) -> tuple[object, list[str]]:
    """A client with the fleet's retry configuration whose attempts are
    answered, in order, with ``answers`` (HTTP status, body) just before they
    are sent; returns it and the body of every attempt."""
    client: Any = boto3.client(
        "autoscaling",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        endpoint_url="http://127.0.0.1:9",  # never reached
        config=aws.client_config(max_attempts=max_attempts),
    )
    seen = answer(client, "auto-scaling.CompleteLifecycleAction", answers, repeat_last=True)
    return client, seen


async def test_throttling_is_retried(imds: FakeImds, sleeps: list[float]) -> None:
    client, seen = _answering(
        [
            (400, error_body("Throttling")),
            (503, error_body("ServiceUnavailable")),
            (200, _COMPLETED),
        ],
        max_attempts=5,
    )
    await _watcher(imds, client).complete()
    assert len(seen) == 3 and len(sleeps) == 2
    for body in seen:
        for key, value in _expected().items():
            assert f"{key}={value}" in body


async def test_throttling_gives_up_after_max_attempts(imds: FakeImds, sleeps: list[float]) -> None:
    client, seen = _answering([(400, error_body("Throttling"))], max_attempts=3)
    with pytest.raises(Unavailable, match="still failing after 3 attempts") as info:
        await _watcher(imds, client, max_attempts=3).complete()
    assert info.value.retriable
    assert len(seen) == 3


def test_its_own_client_retries_with_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    watcher = LifecycleWatcher(hook_name=HOOK, group_name=GROUP, region="us-east-1", max_attempts=4)
    client: Any = watcher._autoscaling()
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (3, 10)


async def test_access_denied_is_a_config_error(
    imds: FakeImds, stubbed: tuple[object, Stubber]
) -> None:
    client, stubber = stubbed
    stubber.add_client_error(
        "complete_lifecycle_action",
        service_error_code="AccessDenied",
        service_message="not authorized to perform: autoscaling:CompleteLifecycleAction",
        http_status_code=403,
    )
    with pytest.raises(ConfigError, match="not allowed"):
        await _watcher(imds, client).complete()
    stubber.assert_no_pending_responses()  # not retried


async def test_no_lifecycle_action_is_internal(
    imds: FakeImds, stubbed: tuple[object, Stubber]
) -> None:
    client, stubber = stubbed
    stubber.add_client_error(
        "complete_lifecycle_action",
        service_error_code="ValidationError",
        service_message="No active Lifecycle Action found with instance ID i-0123456789abcdef0",
        http_status_code=400,
    )
    with pytest.raises(Internal, match="no lifecycle action"):
        await _watcher(imds, client).complete()


async def test_bad_result_is_rejected(imds: FakeImds, stubbed: tuple[object, Stubber]) -> None:
    client, _ = stubbed
    with pytest.raises(ConfigError):
        await _watcher(imds, client).complete("TERMINATE")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def test_from_env_without_a_hook_is_none() -> None:
    assert LifecycleWatcher.from_env({}) is None
    assert LifecycleWatcher.from_env({"FLEET_ASG_NAME": GROUP}) is None
    assert LifecycleWatcher.from_env({"FLEET_LIFECYCLE_HOOK": HOOK}) is None


def test_from_env() -> None:
    watcher = LifecycleWatcher.from_env(
        {"FLEET_LIFECYCLE_HOOK": HOOK, "FLEET_ASG_NAME": GROUP, "AWS_REGION": "eu-west-1"}
    )
    assert watcher is not None
    assert (watcher.hook_name, watcher.group_name, watcher.region) == (HOOK, GROUP, "eu-west-1")
    assert watcher.metadata_url == "http://169.254.169.254"


def test_from_env_region_fallback_and_metadata_endpoint() -> None:
    watcher = LifecycleWatcher.from_env(
        {
            "FLEET_LIFECYCLE_HOOK": HOOK,
            "FLEET_ASG_NAME": GROUP,
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1338/",
        }
    )
    assert watcher is not None
    assert watcher.region == "us-west-2"
    assert watcher.metadata_url == "http://127.0.0.1:1338"


def test_constructor_rejects_empty_names() -> None:
    with pytest.raises(ConfigError):
        LifecycleWatcher(hook_name="", group_name=GROUP)
    with pytest.raises(ConfigError):
        LifecycleWatcher(hook_name=HOOK, group_name="")
