"""An ``amqp://`` URL naming several nodes of a cluster: each node's URL keeps
the login, vhost and parameters, and a connect tries the nodes in turn."""

from __future__ import annotations

import pytest
from aiormq.exceptions import ProbableAuthenticationError

from fleet.errors import AuthenticationFailed, ConfigError, Unavailable
from fleet.transport import connect
from fleet.transport.amqp import AmqpTransport, node_urls

pytestmark = pytest.mark.unit

CLUSTER = "amqp://u:p%40ss@mq1:5681,mq2:5682,mq3/fleet?heartbeat=5"


def test_each_node_keeps_the_login_vhost_and_parameters() -> None:
    assert node_urls(CLUSTER) == [
        "amqp://u:p%40ss@mq1:5681/fleet?heartbeat=5",
        "amqp://u:p%40ss@mq2:5682/fleet?heartbeat=5",
        "amqp://u:p%40ss@mq3/fleet?heartbeat=5",
    ]


@pytest.mark.parametrize(
    "url", ["amqp://u:p@mq:5672/", "amqp://mq/", "amqps://u:p@[::1]:5671/?cafile=/ca.pem"]
)
def test_one_host_comes_back_as_it_is(url: str) -> None:
    assert node_urls(url) == [url]


def test_an_empty_host_is_a_config_error_that_shows_no_password() -> None:
    with pytest.raises(ConfigError, match="empty host") as caught:
        node_urls("amqp://u:secret@mq1:5672,,mq3:5672/")
    assert "secret" not in caught.value.message


def _cluster(refusing: set[str], tried: list[str], error: Exception | None = None) -> AmqpTransport:
    """A transport for ``CLUSTER`` whose nodes in ``refusing`` fail to open."""
    transport = connect(CLUSTER)
    assert isinstance(transport, AmqpTransport)

    async def open_node(url: str) -> None:
        host = url.split("@")[1].split("/")[0]
        tried.append(host)
        if host in refusing:
            raise error or ConnectionRefusedError(f"{host} refused")

    transport._open_node = open_node  # type: ignore[method-assign]
    return transport


async def test_connect_tries_the_nodes_in_turn_and_remembers_the_one_that_answered() -> None:
    tried: list[str] = []
    transport = _cluster({"mq1:5681", "mq2:5682"}, tried)
    await transport.connect()
    assert tried == ["mq1:5681", "mq2:5682", "mq3"]
    assert transport._node == 2
    tried.clear()
    await transport._open()  # the next time starts from the node that answered
    assert tried == ["mq3"]


async def test_every_node_down_is_unavailable() -> None:
    tried: list[str] = []
    transport = _cluster({"mq1:5681", "mq2:5682", "mq3"}, tried)
    with pytest.raises(Unavailable):
        await transport.connect()
    assert tried == ["mq1:5681", "mq2:5682", "mq3"]


async def test_a_refused_login_is_not_tried_on_the_other_nodes() -> None:
    tried: list[str] = []
    refused = ProbableAuthenticationError("ACCESS_REFUSED")
    transport = _cluster({"mq1:5681"}, tried, refused)
    with pytest.raises(AuthenticationFailed, match="refused the login"):
        await transport.connect()
    assert tried == ["mq1:5681"]
