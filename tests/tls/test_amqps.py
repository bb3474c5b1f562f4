"""RabbitMQ over TLS: ``amqps://`` against the local node's TLS listener
(``scripts/rabbitmq.sh tls-env``), the management API over HTTPS, mutual TLS
with ``auth=EXTERNAL``, the least-privilege user, and the refusals that must
fail at connect instead of being retried."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import numpy as np
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelAccessRefused

from fleet.contract import Priority
from fleet.errors import AuthenticationFailed, ConfigError, DecodeError
from fleet.heartbeat import Heartbeat
from fleet.redact import insert_password
from fleet.transport import DEAD_LETTER, HEARTBEATS, Transport, connect, queue_name
from fleet.transport.amqp import DLX, AmqpTransport, tls_context
from fleet.transport.base import new_reply_address, wait_until
from producer import Client
from tests.conftest import ROOT, broker_url_for
from tests.helpers import direct_onnx, rows, running_worker
from tests.tls.conftest import tls_env
from tests.transport.conftest import WAIT, Deliveries, Frames, wait_dead_letter
from worker.lifecycle import Backoff, BrokerWait
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.tls

ONLINE, BATCH = Priority.ONLINE, Priority.BATCH
OpenTransport = Callable[..., Awaitable[Transport]]
WRONG_PASSWORD = "not-the-password-7f3a"


# --------------------------------------------------------------------------- settings
@pytest.fixture(scope="module")
def amqp_tls_dir() -> Path:
    """The CA and client certificate of the RabbitMQ node's TLS listener."""
    return Path(tls_env("FLEET_TEST_AMQP_TLS_DIR"))


@pytest.fixture(scope="module")
def amqps_url() -> str:
    """guest over TLS; the management API over HTTPS."""
    return tls_env("FLEET_TEST_AMQPS_URL")


@pytest.fixture(scope="module")
def app_url() -> str:
    """The least-privilege user, its password put in."""
    url = tls_env("FLEET_TEST_AMQPS_APP_URL")
    return insert_password(url, tls_env("FLEET_TEST_AMQPS_APP_URL_PASSWORD"))


def with_query(url: str, *, netloc: str | None = None, **params: str) -> str:
    """``url`` with query parameters set (and another ``user@host:port``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return urlunsplit(
        parts._replace(netloc=parts.netloc if netloc is None else netloc, query=urlencode(query))
    )


def external_url(amqps_url: str, tls_dir: Path) -> str:
    """Mutual TLS: no user, no password; the client certificate (CN=fleet) logs in."""
    return with_query(
        amqps_url,
        netloc=urlsplit(amqps_url).netloc.rpartition("@")[2],
        auth="EXTERNAL",
        certfile=str(tls_dir / "client.pem"),
        keyfile=str(tls_dir / "client.key"),
    )


@asynccontextmanager
async def raw_channel(url: str) -> AsyncIterator[AbstractChannel]:
    """A channel of a connection of the test's own, with the URL's TLS settings."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    login = urlencode({k: v for k, v in query.items() if k == "auth"})
    connection = await aio_pika.connect(
        urlunsplit(parts._replace(query=login)), ssl_context=tls_context(query), timeout=WAIT
    )
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def open_transport() -> AsyncIterator[OpenTransport]:
    """Connect transports to a URL; all are closed afterwards."""
    opened: list[Transport] = []

    async def make(url: str, **options: object) -> Transport:
        options.setdefault("reconnect_interval", 0.2)
        transport = connect(url, **options)
        opened.append(transport)
        await transport.connect()
        return transport

    yield make
    for transport in opened:
        await transport.close()


@pytest.fixture(autouse=True)
async def _drop_queues(unique_model: str) -> AsyncIterator[None]:
    """Delete the test's work queues afterwards (its models and the worker's)."""
    yield
    url = os.environ.get("FLEET_TEST_AMQPS_URL")
    if not url:
        return  # the test itself said why
    async with raw_channel(url) as channel:
        for model in (unique_model, f"{unique_model}-digits", f"{unique_model}-mlp"):
            for priority in Priority:
                await channel.queue_delete(queue_name(model, priority))


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> bool:
    """Ask ``check`` every 0.2 s until it says yes or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.2)
    return True


async def answered(transport: Transport, model: str) -> bool:
    """Whether the management API tells the model's in-flight count (a queue
    it has no figures for yet answers 404: asked again)."""

    async def known() -> bool:
        return (await transport.depth(model)).in_flight is not None

    return await poll(known)


def beating(beats: Frames) -> set[str]:
    """The ids of the workers among ``beats`` (anything else is skipped)."""
    ids = set()
    for body in beats.items:
        try:
            ids.add(Heartbeat.decode(body).worker_id)
        except DecodeError:
            continue
    return ids


async def refused(channel: AbstractChannel, name: str) -> str:
    """The broker's answer to declaring queue ``name`` on ``channel``."""
    with pytest.raises(ChannelAccessRefused) as caught:
        await channel.declare_queue(name, auto_delete=True)
    return str(caught.value)


# --------------------------------------------------------------------------- the suite over TLS
async def test_publish_consume_ack_and_depth_over_tls(
    open_transport: OpenTransport, amqps_url: str, unique_model: str
) -> None:
    worker = await open_transport(amqps_url)
    client = await open_transport(amqps_url)
    await worker.declare_model(unique_model)
    for body in (b"a", b"b", b"c"):
        await client.publish_request(unique_model, ONLINE, body)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=2)
    held = await got.wait(2)

    # ready and consumers from the broker; in flight from the management API over
    # HTTPS (its figures lag by seconds: the exact count is the rabbitmq tier's)
    assert await answered(client, unique_model)
    depth = await client.depth(unique_model)
    assert (depth.ready, depth.consumers) == (1, 1)
    for delivery in held:
        await delivery.ack()
    (last,) = (await got.wait(3))[2:]
    await last.ack()
    assert sorted(d.body for d in got.items) == [b"a", b"b", b"c"]
    assert all(d.attempt == 1 for d in got.items)


async def test_reply_inbox_and_heartbeats_over_tls(
    open_transport: OpenTransport, amqps_url: str
) -> None:
    client = await open_transport(amqps_url)
    worker = await open_transport(amqps_url)
    replies, beats = Frames(), Frames()
    address = await client.open_inbox(replies)
    await client.subscribe_heartbeats(beats)
    await worker.publish_reply(address, b"answer")
    await worker.publish_heartbeat(b"beat")
    await replies.wait_for(b"answer")
    await beats.wait_for(b"beat")
    await worker.publish_reply(new_reply_address(), b"lost")  # an inbox that is gone


async def test_a_request_through_a_worker_over_tls(
    amqps_url: str, model_repo: Path, unique_model: str
) -> None:
    digits, x = f"{unique_model}-digits", rows(64, 3)
    async with running_worker(amqps_url, model_repo), Client(amqps_url, timeout=WAIT) as client:
        got = await client.infer(digits, {"input": x})
    want = direct_onnx(model_repo / digits, {"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])


async def test_no_verify_ssl_checks_neither_certificate(
    open_transport: OpenTransport, amqps_url: str, unique_model: str
) -> None:
    """For a throw-away broker only: without its CA, ``no_verify_ssl=1`` still
    connects, and the management API over HTTPS still answers."""
    transport = await open_transport(with_query(amqps_url, cafile="", no_verify_ssl="1"))
    await transport.declare_model(unique_model)
    assert await answered(transport, unique_model)


# --------------------------------------------------------------------------- mutual TLS
async def test_mutual_tls_logs_in_with_the_client_certificate(
    open_transport: OpenTransport, amqps_url: str, amqp_tls_dir: Path, unique_model: str
) -> None:
    url = external_url(amqps_url, amqp_tls_dir)
    parts = urlsplit(url)
    assert parts.username is None and parts.password is None
    worker = await open_transport(url)
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, BATCH, got, prefetch=1)
    await worker.publish_request(unique_model, BATCH, b"by certificate")
    (delivery,) = await got.wait(1)
    await delivery.ack()
    # logged in as the certificate's CN, a user limited to the fleet's names
    async with raw_channel(url) as channel:
        assert "for user 'fleet'" in await refused(channel, "other")


async def test_without_a_client_certificate_external_is_refused(
    amqps_url: str, amqp_tls_dir: Path
) -> None:
    url = with_query(external_url(amqps_url, amqp_tls_dir), certfile="", keyfile="")
    transport = connect(url)
    with pytest.raises(AuthenticationFailed, match="EXTERNAL"):
        await transport.connect()
    await transport.close()


# --------------------------------------------------------------------------- least privilege
@pytest.mark.shares("dead-letters")
async def test_the_least_privilege_user_runs_the_fleet(
    open_transport: OpenTransport, app_url: str, model_repo: Path, unique_model: str
) -> None:
    digits, x, worker_id = f"{unique_model}-digits", rows(64, 2), f"{unique_model}-w"
    operator = await open_transport(app_url)
    beats = Frames()
    await operator.subscribe_heartbeats(beats)  # what the autoscaler does
    results = f"memory://jobs-{unique_model}"  # a store: the worker taps the dead letters too
    async with (
        running_worker(
            app_url, model_repo, worker_id=worker_id, heartbeat_interval=0.2, results=results
        ) as worker,
        Client(app_url, timeout=WAIT, results=results) as client,
    ):
        got = await client.infer(digits, {"input": x})
        assert client.jobs is not None
        job = await client.submit(digits, {"input": x})
        np.testing.assert_array_equal(
            (await client.jobs.result(job, timeout=WAIT))["label"], got["label"]
        )
        # every worker on the broker beats into the same exchange: wait for this one's
        assert await wait_until(lambda: worker_id in beating(beats), WAIT)
        assert await answered(operator, digits)  # the management API over HTTPS
        assert (await operator.depth(digits)).consumers == 1
        assert worker.state == "ready"
    want = direct_onnx(model_repo / digits, {"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])
    # a rejected request reaches the dead letters, and they can be taken
    await operator.declare_model(unique_model)
    work, poison = Deliveries(), f"poison-{unique_model}".encode()
    await operator.consume(unique_model, BATCH, work, prefetch=1)
    await operator.publish_request(unique_model, BATCH, poison)
    (delivery,) = await work.wait(1)
    await delivery.reject()
    assert await wait_dead_letter(operator, poison)


async def test_a_url_naming_only_the_user_takes_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, model_repo: Path, unique_model: str
) -> None:
    """``amqps://fleet-app@host/`` and ``FLEET_BROKER_PASSWORD``: the client,
    the worker and the management API (same user) all log in with it."""
    url = tls_env("FLEET_TEST_AMQPS_APP_URL")
    password = tls_env("FLEET_TEST_AMQPS_APP_URL_PASSWORD")
    monkeypatch.setenv("FLEET_BROKER_PASSWORD", password)
    digits, x = f"{unique_model}-digits", rows(64, 8)
    async with running_worker(url, model_repo), Client(url, timeout=WAIT) as client:
        got = await client.infer(digits, {"input": x})
    want = direct_onnx(model_repo / digits, {"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])
    transport = connect(url)
    try:
        await transport.connect()
        assert (await transport.depth(digits)).ready == 0  # the management API logs in too
        assert password not in repr(transport)
    finally:
        await transport.close()


async def test_the_least_privilege_user_is_refused_other_names(
    open_transport: OpenTransport, app_url: str
) -> None:
    async with raw_channel(app_url) as channel:
        message = await refused(channel, "other")
    assert "access to queue 'other'" in message and "for user 'fleet-app'" in message
    transport = cast(AmqpTransport, await open_transport(app_url))
    with pytest.raises(ConfigError, match="permissions do not allow it") as caught:
        async with transport._scratch("declare queue 'other'") as channel:
            await channel.declare_queue("other", auto_delete=True)
    assert not caught.value.retriable
    async with raw_channel(app_url) as channel:  # nor may it publish to an exchange of others
        exchange = await channel.get_exchange("amq.fanout", ensure=False)
        with pytest.raises(ChannelAccessRefused, match=r"amq\.fanout"):
            await exchange.publish(aio_pika.Message(b"x"), "", timeout=WAIT)


# --------------------------------------------------------------------------- refusals
async def test_a_wrong_password_fails_at_connect_and_is_not_retried(
    app_url: str, model_repo: Path
) -> None:
    url = insert_password(app_url, WRONG_PASSWORD)
    transport = connect(url)
    with pytest.raises(AuthenticationFailed, match="refused the login") as caught:
        await transport.connect()
    assert WRONG_PASSWORD not in str(caught.value)
    assert "fleet-app:***@" in str(caught.value)
    await transport.close()
    # the worker's wait for its broker gives up at the first refusal
    wait = BrokerWait(url, backoff=Backoff(initial=0.5, cap=1.0), timeout=None)
    with pytest.raises(ConfigError) as boot:
        await wait.connect(connect(url))
    assert wait.attempts == 1 and WRONG_PASSWORD not in str(boot.value)
    worker = Worker(WorkerSettings(broker=url, models=model_repo, http_port=None))
    with pytest.raises(ConfigError):
        await worker.start()
    assert worker.boot is not None and worker.boot.attempts == 1


async def test_a_broker_certificate_from_another_ca_is_not_trusted(
    amqps_url: str, amqp_tls_dir: Path
) -> None:
    transport = connect(with_query(amqps_url, cafile=str(amqp_tls_dir / "other-ca.pem")))
    with pytest.raises(AuthenticationFailed, match="certificate is not trusted"):
        await transport.connect()
    await transport.close()


@pytest.fixture
def untrusted_client_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed client certificate (CN=fleet) and its key: no CA the broker trusts."""
    cert, key = tmp_path / "self.pem", tmp_path / "self.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=fleet", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_a_client_certificate_the_broker_does_not_trust_is_refused(
    amqps_url: str, untrusted_client_cert: tuple[Path, Path]
) -> None:
    cert, key = untrusted_client_cert
    transport = connect(with_query(amqps_url, certfile=str(cert), keyfile=str(key)))
    with pytest.raises(AuthenticationFailed, match="refused our client certificate"):
        await transport.connect()
    await transport.close()


async def test_amqps_to_the_plaintext_port_is_a_clear_config_error(amqps_url: str) -> None:
    plain = urlsplit(broker_url_for("amqp"))
    netloc = f"{urlsplit(amqps_url).netloc.rpartition('@')[0]}@{plain.hostname}:{plain.port}"
    transport = connect(with_query(amqps_url, netloc=netloc))
    with pytest.raises(ConfigError, match="TLS handshake failed") as caught:
        await transport.connect()
    assert not isinstance(caught.value, AuthenticationFailed) and not caught.value.retriable
    await transport.close()


async def test_a_missing_ca_file_is_a_config_error_naming_it(
    amqps_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        connect(with_query(amqps_url, cafile=str(missing)))
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        tls_context({"cafile": str(missing)})


# --------------------------------------------------------------------------- the permissions
def _script_permissions() -> tuple[str, str]:
    script = (ROOT / "scripts" / "rabbitmq.sh").read_text(encoding="utf-8")
    names = re.search(r"^FLEET_NAMES='(.+)'$", script, re.M)
    write = re.search(r"^FLEET_WRITE='(.+)'$", script, re.M)
    assert names and write
    return names.group(1), write.group(1)


def test_the_permissions_cover_the_fleets_names_and_nothing_else() -> None:
    names, write = _script_permissions()
    heartbeat_queue = f"{HEARTBEATS}.{'0' * 32}"
    used = [
        *(queue_name(m, p) for m in ("digits", "a.b-c_9", "x" * 128) for p in Priority),
        DLX,
        DEAD_LETTER,
        HEARTBEATS,
        heartbeat_queue,
        new_reply_address(),
    ]
    assert all(re.fullmatch(names, name) for name in used), used
    for published_or_bound in ("amq.default", HEARTBEATS, heartbeat_queue, DEAD_LETTER, DLX):
        assert re.fullmatch(write, published_or_bound)
    others = ["other", "amq.gen-abc", "fleet.inbox.short", "fleet.x.later", "fleet.", "xfleet.dlx"]
    for other in others:
        assert not re.fullmatch(names, other) and not re.fullmatch(write, other), other
    assert not re.fullmatch(write, queue_name("digits", ONLINE))  # consumed, never bound to
    # docs/security.md shows the same line the script runs
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert f"set_permissions -p / fleet-app '{names}' '{write}' '{names}'" in doc


@pytest.mark.parametrize("login", ["password", "certificate"])
async def test_the_protocol_client_logs_in_over_tls(
    amqps_url: str, amqp_tls_dir: Path, login: str
) -> None:
    """``fleet.transport._amqp_wire`` over TLS: guest's password (PLAIN), or
    the client certificate alone (EXTERNAL); a message goes round."""
    from urllib.parse import unquote

    from fleet.transport._amqp_wire import Delivered, WireConnection

    url = amqps_url if login == "password" else external_url(amqps_url, amqp_tls_dir)
    parts = urlsplit(url)
    conn = await WireConnection.open(
        parts.hostname or "127.0.0.1",
        parts.port or 5671,
        login=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        external=login == "certificate",
        ssl_context=tls_context(dict(parse_qsl(parts.query))),
    )
    try:
        ch = await conn.channel(confirms=True)
        name = new_reply_address()  # a name the certificate's user may declare
        await ch.declare_queue(name, exclusive=True)
        got: list[Delivered] = []
        await ch.consume(name, got.append, no_ack=True)
        await asyncio.wait_for(ch.publish(name, b"over tls", persistent=False), WAIT)
        async with asyncio.timeout(WAIT):
            while not got:
                await asyncio.sleep(0.01)
        assert got[0].body == b"over tls"
    finally:
        await conn.close()
