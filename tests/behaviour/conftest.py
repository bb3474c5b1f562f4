"""The behavioural suite runs on the brokers as production runs them.

For ``amqp`` and ``kafka`` the suite's URL is the broker's secure listener, not
its plaintext port:

- RabbitMQ: ``amqps://`` as the least-privilege user ``fleet-app``
  (``FLEET_TEST_AMQPS_APP_URL``), the management API over HTTPS;
- Kafka: ``kafka+sasl+ssl://`` with SCRAM-SHA-512 (``FLEET_TEST_KAFKA_SASL_SSL_URL``).

Each URL names the user only; its password (``<variable>_PASSWORD``) is put in
``FLEET_BROKER_PASSWORD`` for the test, where clients, workers in this process
and worker subprocesses all read it. The plaintext ports keep the transport,
chaos and cluster tiers. Outside CI, with no secure listener configured, the
plaintext URL is used instead (under ``CI=true`` that is a failure).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fleet.transport.memory import MemoryBroker
from tests.conftest import IN_CI, broker_url_for, missing

SECURE = {"amqp": "FLEET_TEST_AMQPS_APP_URL", "kafka": "FLEET_TEST_KAFKA_SASL_SSL_URL"}


def secure_url(kind: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The secure listener's URL for ``kind``; its password in the environment."""
    name = SECURE[kind]
    url, password = os.environ.get(name), os.environ.get(f"{name}_PASSWORD")
    if not url or not password:
        if IN_CI:
            missing(f"{name} and {name}_PASSWORD are not set: run scripts/test.sh")
        return broker_url_for(kind)  # a plaintext broker brought by hand
    monkeypatch.setenv("FLEET_BROKER_PASSWORD", password)
    monkeypatch.delenv("FLEET_BROKER_PASSWORD_FILE", raising=False)
    return url


@pytest.fixture
def broker_url(broker_kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if broker_kind == "memory":
        url = broker_url_for(broker_kind)
        yield url
        MemoryBroker.reset(url.removeprefix("memory://"))
        return
    yield secure_url(broker_kind, monkeypatch)


@pytest.fixture
def memory_url(unique_model: str) -> Iterator[str]:
    """A memory:// broker of this test's own."""
    yield f"memory://{unique_model}"
    MemoryBroker.reset(unique_model)
