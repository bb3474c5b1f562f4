"""Kafka over TLS and SASL, against the broker's secured listeners: requests
answered through a worker on each listener, every refusal (a wrong
password, an untrusted broker certificate, no client certificate where one
is required) a clear, non-retriable error at connect, and a rebalance on
aiokafka's fetches (SASL: no connections of the transport's own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.contract import Priority
from fleet.errors import AuthenticationFailed, ConfigError
from fleet.transport import Delivery, connect
from fleet.transport._kafka_security import diagnose
from fleet.transport.kafka import KafkaTransport
from producer import Client
from tests.helpers import direct_onnx, rows, running_worker
from tests.tls.conftest import tls_env
from tests.transport.kafka_support import (
    Connect,
    collector,
    eventually,
    joining_and_leaving_loses_nothing,
)

pytestmark = [pytest.mark.tls, pytest.mark.kafka]


def listener(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of listener ``name`` (its password in FLEET_BROKER_PASSWORD)."""
    url = tls_env(f"FLEET_TEST_KAFKA_{name}_URL")
    if "@" in url:
        monkeypatch.setenv(
            "FLEET_BROKER_PASSWORD", tls_env(f"FLEET_TEST_KAFKA_{name}_URL_PASSWORD")
        )
    return url


@pytest.mark.parametrize(
    ("name", "mechanism"),
    [
        pytest.param("SSL", None, id="mutual-tls"),
        pytest.param("SASL_SSL", "SCRAM-SHA-512", id="scram-sha-512-over-tls"),
        pytest.param("SASL_SSL", "SCRAM-SHA-256", id="scram-sha-256-over-tls"),
        pytest.param("SASL", "PLAIN", id="plain-on-loopback"),
    ],
)
async def test_requests_are_answered_on_each_secured_listener(
    name: str,
    mechanism: str | None,
    monkeypatch: pytest.MonkeyPatch,
    model_repo: Path,
    unique_model: str,
) -> None:
    url = listener(name, monkeypatch)
    if mechanism is not None:
        url = url.replace(url[url.index("sasl_mechanism=") :], f"sasl_mechanism={mechanism}")
    model = f"{unique_model}-digits"
    x = rows(64, 6)
    async with running_worker(url, model_repo), Client(url, timeout=20) as client:
        got = await client.infer(model, {"input": x})
    want = direct_onnx(model_repo / model, {"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])


async def test_a_wrong_password_is_refused_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    url = listener("SASL_SSL", monkeypatch)
    monkeypatch.setenv("FLEET_BROKER_PASSWORD", "not-the-password")
    transport = connect(url)
    with pytest.raises(AuthenticationFailed, match="refused the SASL SCRAM-SHA-512 login") as err:
        await transport.connect()
    assert not err.value.retriable
    assert "not-the-password" not in str(err.value)
    await transport.close()


async def test_an_untrusted_broker_certificate_is_refused(
    monkeypatch: pytest.MonkeyPatch, tls_dir: Path
) -> None:
    url = listener("SSL", monkeypatch).replace(f"{tls_dir}/ca.pem", f"{tls_dir}/other-ca.pem")
    assert "other-ca.pem" in url
    transport = connect(url)
    with pytest.raises(AuthenticationFailed, match="certificate is not trusted"):
        await transport.connect()
    await transport.close()


async def test_mutual_tls_without_a_client_certificate_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = listener("SSL", monkeypatch)
    without = url.split("&certfile=")[0]
    assert "certfile" not in without and "cafile" in without
    transport = connect(without)
    with pytest.raises(AuthenticationFailed, match="client certificate"):
        await transport.connect()
    await transport.close()


@pytest.mark.parametrize("name", ["SSL", "SASL_SSL"])
async def test_a_second_look_at_a_broker_that_answers_finds_nothing_wrong(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed bootstrap the transport connects once more to tell a
    refusal from an outage; where the broker answers and accepts us (it was
    only busy), that look must end quietly: the Unavailable stands."""
    transport = connect(listener(name, monkeypatch))
    assert isinstance(transport, KafkaTransport)
    await diagnose(transport.bootstrap[0], transport.security)


def test_tls_files_that_cannot_be_read_fail_before_connecting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = listener("SSL", monkeypatch).split("?")[0] + f"?cafile={tmp_path}/none.pem"
    with pytest.raises(ConfigError, match="Kafka TLS files"):
        connect(url).security.client_kwargs()  # type: ignore[attr-defined]


@pytest.fixture
async def sasl_kafka(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Connect]:
    """Transports on the SASL listener (options as keywords): aiokafka's
    fetches, no connections of the transport's own; all closed afterwards."""
    url = listener("SASL", monkeypatch)
    made: list[KafkaTransport] = []

    async def make(**options: Any) -> KafkaTransport:
        t = connect(url, reconnect_interval=0.2, **options)
        assert isinstance(t, KafkaTransport)
        await t.connect()
        made.append(t)
        assert t.wire is None  # aiokafka's fetches
        return t

    yield make
    for t in made:
        await t.close()


async def test_consumers_joining_and_leaving_lose_nothing_on_aiokafkas_fetches(
    sasl_kafka: Connect, unique_model: str
) -> None:
    """Where the transport has no connections of its own (SASL), aiokafka's
    consumer fetches the records: a consumer joining and one leaving lose
    and skip nothing there either."""
    first, second, client = [await sasl_kafka(partitions=4) for _ in range(3)]
    await joining_and_leaving_loses_nothing(first, second, client, unique_model)


async def test_records_aiokafka_returns_while_an_assignment_is_set_up_are_read_again(
    sasl_kafka: Connect, unique_model: str
) -> None:
    """aiokafka may return the new assignment's first records while this
    consumer still sets that assignment up: they are put back (the partition
    sought back to the first of them) and read again once it is set up, not
    dropped with the position past them."""
    from fleet.transport._kafka_consumer import GroupConsumer
    from fleet.transport._kafka_wire import Record

    worker, client = await sasl_kafka(partitions=1), await sasl_kafka(partitions=1)
    await client.declare_model(unique_model)
    got: list[Delivery] = []
    group = await worker.consume(unique_model, Priority.ONLINE, collector(got), prefetch=4)
    assert isinstance(group, GroupConsumer)
    await eventually(lambda: len(group._parts) == 1, timeout=30)
    await group.pause()
    for i in range(2):
        await client.publish_request(unique_model, Priority.ONLINE, f"r{i}".encode())
    (tp,) = group._parts
    returned = [Record(tp.topic, tp.partition, i, 0, None, b"", []) for i in (0, 1)]
    group._kafka.seek(tp, 2)  # as if a fetch had returned them
    group._assignment_ready.clear()  # the assignment is being set up
    await group._hand_out({tp: returned})
    group._assignment_ready.set()
    await group.resume()
    await eventually(lambda: len(got) >= 2, timeout=30)
    assert sorted(d.body for d in got) == [b"r0", b"r1"]
