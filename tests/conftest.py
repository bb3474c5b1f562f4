"""Shared fixtures: which brokers the tiers run against, and the built models.

Brokers come from the environment:

- ``FLEET_TEST_AMQP_URL`` / ``FLEET_TEST_KAFKA_URL``: the broker to test against;
- ``FLEET_TEST_AMQP_RESTART`` / ``FLEET_TEST_KAFKA_RESTART``: a shell command that
  restarts that broker (the fault tests need it).

``scripts/test.sh`` starts local servers and sets all four. Under ``CI=true`` a
tier whose broker is missing fails; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote
from urllib.request import Request, urlopen

import pytest
import structlog
from structlog._config import BoundLoggerLazyProxy

from fleet import aws
from fleet.transport._amqp_management import management_api
from fleet.transport.memory import MemoryBroker
from tests.container.image import prepare_image
from tests.sharing import file_lock, holding, in_parallel, lock_mode, shared_resources

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerKind:
    """One kind of broker the tiers run against."""

    mark: pytest.MarkDecorator  # the tier its tests belong to
    url_env: str | None = None  # the variable naming its URL; None: embedded
    restart_env: str | None = None  # the variable holding its restart command


BROKERS: dict[str, BrokerKind] = {
    "memory": BrokerKind(mark=pytest.mark.memory),
    "amqp": BrokerKind(
        mark=pytest.mark.rabbitmq,
        url_env="FLEET_TEST_AMQP_URL",
        restart_env="FLEET_TEST_AMQP_RESTART",
    ),
    "kafka": BrokerKind(
        mark=pytest.mark.kafka,
        url_env="FLEET_TEST_KAFKA_URL",
        restart_env="FLEET_TEST_KAFKA_RESTART",
    ),
}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Under xdist, hold the shared servers as the test needs them (see
    tests/sharing.py) before its setup and time limit start."""
    if item.get_closest_marker("container"):
        prepare_image()  # needs no server: built before the servers are held
    mode = lock_mode(item) if in_parallel() else None
    if mode is None:
        yield
        return
    run = getattr(item.config, "workerinput", {}).get("testrunuid", "serial")
    locks = Path(tempfile.gettempdir()) / f"fleet-tests-{run}"
    with contextlib.ExitStack() as held:
        held.enter_context(holding(locks, mode))
        for name in shared_resources(item):
            held.enter_context(file_lock(locks / f"{name}.lock"))
        yield


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or client a test leaks is reported when the garbage collector
    finds it; collecting after every test makes that the test that leaked it,
    not whichever later test happens to trigger a collection."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _structlog_as_it_was() -> Iterator[None]:
    """A command run in this process (``fleet autoscaler``'s handler) sets up
    structlog for the whole process: a level filter, and loggers cached on
    first use. Put the setup back after such a test, and forget the loggers
    cached meanwhile, so a later test's ``capture_logs`` sees every level."""
    before = structlog.get_config()
    yield
    if structlog.get_config() == before:
        return
    structlog.configure(**before)
    for module in list(sys.modules.values()):
        try:
            values = list(vars(module).values())
        except TypeError:  # not a module with a namespace
            continue
        for value in values:
            if isinstance(value, BoundLoggerLazyProxy):
                value.__dict__.pop("bind", None)  # cached by cache_logger_on_first_use


def missing(what: str) -> NoReturn:
    """Fail under CI, skip elsewhere: a tier never passes for lack of a service."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(what)


def broker_url_for(kind: str) -> str:
    env = BROKERS[kind].url_env
    if env is None:
        return f"{kind}://test-{uuid.uuid4().hex[:8]}"
    url = os.environ.get(env)
    if not url:
        missing(f"{env} is not set; run scripts/test.sh to start a local {kind} broker")
    assert url is not None
    return url


@pytest.fixture(params=[pytest.param(kind, marks=b.mark) for kind, b in BROKERS.items()])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(broker_kind: str) -> Iterator[str]:
    url = broker_url_for(broker_kind)
    yield url
    if broker_kind == "memory":
        MemoryBroker.reset(url.removeprefix("memory://"))


@pytest.fixture
def restart_broker(broker_kind: str, broker_url: str) -> object:
    """An async callable that restarts the broker under test."""

    async def restart() -> None:
        if broker_kind == "memory":
            await MemoryBroker.get(broker_url.removeprefix("memory://")).restart()
            return
        env = BROKERS[broker_kind].restart_env
        cmd = os.environ.get(env) if env else None
        if not cmd:
            missing(f"{env} is not set: cannot restart the broker")
        assert cmd is not None
        proc = await asyncio.create_subprocess_shell(cmd, stdout=subprocess.DEVNULL)
        rc = await proc.wait()
        assert rc == 0, f"restart command {cmd!r} exited {rc}"

    return restart


@pytest.fixture
def unique_model() -> Iterator[str]:
    """A model name no other test uses (queues and topics are per model).

    Afterwards the test RabbitMQ node's queues of that name are deleted: a node
    recovers every durable queue it holds at each start, so queues left by
    hundreds of tests would make every later broker restart slower."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    url = os.environ.get("FLEET_TEST_AMQP_URL")
    if url:
        _delete_queues(url, name)


def _delete_queues(broker_url: str, model: str) -> None:
    """Delete the queues ``fleet.<model>...`` through the management API; a
    node that is down or slow to answer is left as it is."""
    api = management_api(broker_url)
    headers = api.headers
    pattern = quote(f"^fleet\\.{model}", safe="")
    listing = f"{api.base}/api/queues/%2F?name={pattern}&use_regex=true&page=1&page_size=500"
    try:
        with urlopen(Request(listing, headers=headers), timeout=2) as reply:
            names = [q["name"] for q in json.load(reply)["items"]]
        for queue in names:
            target = f"{api.base}/api/queues/%2F/{quote(queue, safe='')}"
            urlopen(Request(target, headers=headers, method="DELETE"), timeout=2).close()
    except (OSError, ValueError, KeyError):
        pass


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """An empty bucket on moto's server, which every boto3 client here reaches
    through the environment (as a user's would reach S3)."""
    url = os.environ.get("FLEET_TEST_AWS_URL")
    if not url:
        missing("FLEET_TEST_AWS_URL is not set; run scripts/moto.sh start (or scripts/test.sh)")
    assert url is not None
    for name, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # where an s3:// repository is copied
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    s3 = aws.s3_client()
    name = f"fleet-models-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, built once per test run (deterministic)."""
    from worker.zoo import build_all

    root = ROOT / ".cache" / "test-models"
    with file_lock(ROOT / ".cache" / "test-models.lock"):  # xdist workers build once
        build_all(root)
    return root


@pytest.fixture
def model_repo(tmp_path: Path, built_models: Path, unique_model: str) -> Path:
    """A model repository serving ``digits`` and ``mlp`` under names unique to
    this test: ``<unique_model>-digits`` and ``<unique_model>-mlp``."""
    root = tmp_path / "models"
    root.mkdir()
    for name in ("digits", "mlp"):
        (root / f"{unique_model}-{name}").symlink_to(built_models / name, target_is_directory=True)
    return root
