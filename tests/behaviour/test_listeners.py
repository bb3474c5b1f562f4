"""Which listener the behavioural suite runs on (tests/behaviour/conftest.py)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from fleet.transport import connect
from tests.conftest import IN_CI

EXPECTED = {"memory": "memory", "amqp": "amqps", "kafka": "kafka+sasl+ssl"}


async def test_the_suite_runs_on_the_secure_listeners(broker_kind: str, broker_url: str) -> None:
    if not IN_CI and urlsplit(broker_url).scheme == broker_kind:
        pytest.skip("no secure listener configured outside CI: the plaintext port is used")
    assert urlsplit(broker_url).scheme == EXPECTED[broker_kind]
    if broker_kind == "memory":
        return
    parts = urlsplit(broker_url)
    assert parts.username and parts.password is None  # the password comes from the environment
    assert os.environ["FLEET_BROKER_PASSWORD"]
    async with connect(broker_url) as transport:  # and it logs in with it
        assert transport.connected
