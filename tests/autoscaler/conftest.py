"""Fixtures of the autoscaler's end-to-end tests."""

from __future__ import annotations

import pytest

from tests.conftest import broker_url_for


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
def real_broker(request: pytest.FixtureRequest) -> str:
    """RabbitMQ, then Kafka."""
    return broker_url_for(str(request.param))
