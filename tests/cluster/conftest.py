"""The cluster tier: 3-node RabbitMQ and 3-broker Kafka clusters on loopback,
losing a node under load.

``scripts/rabbitmq-cluster.sh`` and ``scripts/kafka-cluster.sh`` start them
(``start``), say where they are (``env``: ``FLEET_TEST_*=value`` lines) and stop,
start or kill one node (``stop-node N``, ``start-node N``, ``kill-node N``).
``scripts/test.sh`` exports what ``env`` prints. Under ``CI=true`` a missing
cluster fails the tier, as for every tier.
"""

from __future__ import annotations

import os

from tests.conftest import missing


def cluster_env(name: str) -> str:
    """The variable ``name``; fails under CI and skips elsewhere when unset."""
    value = os.environ.get(name)
    if not value:
        missing(f"{name} is not set: start the clusters with scripts/test.sh or set it")
    assert value is not None
    return value
