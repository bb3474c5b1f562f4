"""Where the tiers' services come from: a URL in the environment, else a
container when a Docker engine answers, else the local scripts; the engine
check is bounded; the containers' URLs are built from their host and ports.

No Docker engine is needed: the engine is a fake one answering on a socket
here, and the container classes' methods that would reach an engine are
patched with ``autospec`` (patching a name testcontainers does not have fails).
"""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from fleet.transport import connect
from tests import services
from tests.services import SERVICES, Running, choose

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def _engine_must_not_be_asked() -> bool:
    raise AssertionError("the engine was asked although a URL is set")


# -- the decision -----------------------------------------------------------------


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_url_in_the_environment_wins_even_with_an_engine(service: str) -> None:
    env = {SERVICES[service].url_env: "scheme://somewhere:1"}
    assert choose(service, env, lambda: True) == "env"
    assert choose(service, env, _engine_must_not_be_asked) == "env"


@pytest.mark.parametrize("service", list(SERVICES))
def test_an_engine_beats_the_local_scripts(service: str) -> None:
    assert choose(service, {}, lambda: True) == "container"


@pytest.mark.parametrize("service", list(SERVICES))
def test_without_an_engine_the_local_scripts_start_the_service(service: str) -> None:
    assert choose(service, {}, lambda: False) == "script"


def test_an_empty_url_counts_as_unset_and_other_services_urls_do_not_count() -> None:
    assert choose("kafka", {"FLEET_TEST_KAFKA_URL": ""}, lambda: False) == "script"
    assert choose("kafka", {"FLEET_TEST_AMQP_URL": "amqp://h/"}, lambda: True) == "container"


@pytest.mark.parametrize(
    ("name", "service"),
    [("amqp", "amqp"), ("rabbitmq", "amqp"), ("kafka", "kafka"), ("aws", "aws"), ("moto", "aws")],
)
def test_a_service_is_named_by_itself_or_by_its_script(name: str, service: str) -> None:
    assert services.service_named(name) is SERVICES[service]
    assert (ROOT / "scripts" / f"{SERVICES[service].script}.sh").is_file()


def test_an_unknown_service_is_an_error() -> None:
    with pytest.raises(KeyError, match="no service 'postgres'"):
        choose("postgres", {}, lambda: False)


# -- the engine check -------------------------------------------------------------


def test_a_check_that_does_not_return_counts_as_no_engine() -> None:
    release = threading.Event()
    try:
        assert services.answers_within(lambda: release.wait(60), 0.05) is False
    finally:
        release.set()


def test_a_check_that_raises_counts_as_no_engine() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError

    assert services.answers_within(refused, 5) is False


def test_a_check_that_answers_in_time_is_its_answer() -> None:
    assert services.answers_within(lambda: True, 30) is True
    assert services.answers_within(lambda: False, 30) is False


@pytest.fixture
def docker_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set DOCKER_HOST for the check, with no ``tc.host`` from a properties file."""
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "tc_properties", {})

    def set_host(value: str) -> None:
        monkeypatch.setenv("DOCKER_HOST", value)

    yield set_host


def test_no_engine_when_docker_host_names_a_missing_socket(
    docker_host: Any, tmp_path: Path
) -> None:
    docker_host(f"unix://{tmp_path / 'docker.sock'}")
    with pytest.raises(OSError):
        services.docker_ping(1.0)
    assert services.engine_answers(1.0) is False


def test_no_engine_when_docker_host_names_a_closed_port(docker_host: Any) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    docker_host(f"tcp://{HOST}:{port}")  # bound, never listened on: refused
    assert services.engine_answers(1.0) is False


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_no_engine_when_docker_host_never_answers(
    docker_host: Any, tmp_path: Path, family: str
) -> None:
    """Something accepts the connection and never replies: the check gives up."""
    if family == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / "silent.sock"))
        docker_host(f"unix://{tmp_path / 'silent.sock'}")
    else:
        sock = socket.socket()
        sock.bind((HOST, 0))
        docker_host(f"tcp://{HOST}:{sock.getsockname()[1]}")
    with sock:
        sock.listen(8)
        assert services.engine_answers(0.2) is False


class _Engine(http.server.BaseHTTPRequestHandler):
    """Docker's ``/_ping``, and nothing else."""

    def do_GET(self) -> None:
        ok = self.path.endswith("/_ping")
        body = b"OK" if ok else b'{"message": "page not found"}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "engine"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixEngine(socketserver.UnixStreamServer):
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        request, _ = super().get_request()
        return request, ("engine", 0)


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_an_engine_that_answers_is_found(docker_host: Any, tmp_path: Path, family: str) -> None:
    server: socketserver.BaseServer
    if family == "unix":
        path = tmp_path / "docker.sock"
        server = _UnixEngine(str(path), _Engine)
        docker_host(f"unix://{path}")
    else:
        server = socketserver.TCPServer((HOST, 0), _Engine)
        docker_host(f"tcp://{HOST}:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert services.docker_ping(30) is True
        assert services.engine_answers(30) is True
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_command_line_chooses_the_scripts_without_an_engine(tmp_path: Path) -> None:
    """What scripts/test.sh runs, warnings as errors: a URL wins, else (no
    engine at DOCKER_HOST) the scripts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_TEST_", "TC_"))}
    env["DOCKER_HOST"] = f"unix://{tmp_path / 'docker.sock'}"
    env["HOME"] = str(tmp_path)  # no ~/.testcontainers.properties, no Docker context

    def chosen(*args: str, **extra: str) -> str:
        cmd = [sys.executable, "-W", "error", "-m", "tests.services", *args]
        out = subprocess.run(
            cmd, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""
        return out.stdout.strip()

    assert chosen("choose", "rabbitmq") == "script"
    assert chosen("choose", "kafka", FLEET_TEST_KAFKA_URL="kafka://h:1") == "env"


# -- URLs -------------------------------------------------------------------------


def test_the_amqp_url_carries_its_management_api_to_the_transport() -> None:
    url = services.amqp_url(HOST, 32771, 32772, "guest", "guest")
    assert (
        url == "amqp://guest:guest@127.0.0.1:32771/?management_url=http%3A%2F%2F127.0.0.1%3A32772"
    )
    transport = connect(url)
    assert transport.options.management_url == "http://127.0.0.1:32772"  # type: ignore[attr-defined]


def test_the_kafka_url_is_the_transports_bootstrap_server() -> None:
    url = services.kafka_url(HOST, 32773)
    assert url == "kafka://127.0.0.1:32773"
    assert connect(url).bootstrap == ["127.0.0.1:32773"]  # type: ignore[attr-defined]


def test_urls_bracket_ipv6_hosts_and_quote_credentials() -> None:
    assert services.kafka_url("::1", 9) == "kafka://[::1]:9"
    assert services.http_url("::1", 5) == "http://[::1]:5"
    assert services.redis_url("localhost", 6) == "redis://localhost:6/0"
    assert services.amqp_url("h", 1, 2, "u@x", "p/w").startswith("amqp://u%40x:p%2Fw@h:1/?")


# -- containers (engine calls patched) --------------------------------------------


@pytest.fixture
def no_engine() -> Iterator[None]:
    """Container objects are made without asking an engine; what would reach
    it is patched per test."""
    with mock.patch("testcontainers.core.container.DockerClient", autospec=True):
        yield


def _bound_port(container: Any, port: int) -> int:
    """What the engine would say: the host port the container's port is bound to."""
    bound = container.ports[str(port)]
    assert isinstance(bound, int), container.ports
    return bound


@pytest.fixture
def reachable() -> Iterator[None]:
    from testcontainers.core.container import DockerContainer

    patch = mock.patch.object
    with (
        patch(DockerContainer, "get_container_host_ip", autospec=True, return_value=HOST),
        patch(DockerContainer, "get_exposed_port", autospec=True, side_effect=_bound_port),
        patch(DockerContainer, "get_container_id", autospec=True, return_value="c0ffee"),
    ):
        yield


def test_patching_a_name_testcontainers_does_not_have_fails() -> None:
    cls = services.rabbitmq_container()
    with pytest.raises(AttributeError), mock.patch.object(cls, "get_exposed_ports", autospec=True):
        pass


def _started(start: mock.MagicMock) -> Any:
    start.assert_called_once()
    return start.call_args.args[0]  # autospec: the container is `self`


@pytest.mark.usefixtures("no_engine", "reachable")
def test_rabbitmq_with_its_management_api() -> None:
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    cls = services.rabbitmq_container()
    with (
        mock.patch.object(cls, "start", autospec=True) as start,
        mock.patch.object(HttpWaitStrategy, "wait_until_ready", autospec=True) as management,
    ):
        running = services.start_container("amqp", env={})
    container = _started(start)
    assert container.image == "rabbitmq:3.13-management"
    amqp, api = _bound_port(container, 5672), _bound_port(container, 15672)
    assert amqp != api
    assert running == Running(
        url=services.amqp_url(HOST, amqp, api, "guest", "guest"), container_id="c0ffee"
    )
    assert management.call_args.args[1] is container
    erl_args = container.env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert "collect_statistics_interval 1000" in erl_args


@pytest.mark.usefixtures("no_engine", "reachable")
def test_kafka_in_kraft_mode_with_the_brokers_settings() -> None:
    cls = services.kafka_container()
    with mock.patch.object(cls, "start", autospec=True) as start:
        running = services.start_container("kafka", env={})
    container = _started(start)
    assert container.kraft_enabled is True
    assert container.image == "confluentinc/cp-kafka:7.9.0"
    assert container.env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert running.url == f"kafka://{HOST}:{_bound_port(container, 9093)}"


@pytest.mark.usefixtures("no_engine", "reachable")
def test_an_image_from_the_environment_and_kraft_refuses_an_old_one() -> None:
    cls = services.kafka_container()
    with mock.patch.object(cls, "start", autospec=True) as start:
        services.start_container("kafka", env={"FLEET_TEST_KAFKA_IMAGE": "mirror/cp-kafka:7.8.1"})
        assert _started(start).image == "mirror/cp-kafka:7.8.1"
        with pytest.raises(ValueError, match="not supported in Kraft mode"):
            services.start_container("kafka", env={"FLEET_TEST_KAFKA_IMAGE": "cp-kafka:6.2.0"})


@pytest.mark.usefixtures("no_engine", "reachable")
def test_moto_from_its_image_waits_for_its_api() -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    with mock.patch.object(DockerContainer, "start", autospec=True) as start:
        running = services.start_container("moto", env={})
    container = _started(start)
    assert container.image.startswith("motoserver/moto:")
    assert container.volumes == {
        str(services.MOTO_SERVER): {"bind": "/fleet/moto_server.py", "mode": "ro"}
    }
    assert services.MOTO_SERVER.is_file()
    assert container._kwargs["entrypoint"] == ["python3", "/fleet/moto_server.py"]
    assert container._command == "-H 0.0.0.0 -p 5000"
    assert isinstance(container._wait_strategy, HttpWaitStrategy)
    assert running.url == f"http://{HOST}:{_bound_port(container, 5000)}"


@pytest.mark.usefixtures("no_engine", "reachable")
def test_redis() -> None:
    cls = services.redis_container()
    with mock.patch.object(cls, "start", autospec=True) as start:
        running = services.start_container("redis", env={"FLEET_TEST_REDIS_IMAGE": "valkey:8"})
    container = _started(start)
    assert container.image == "valkey:8"
    assert running.url == f"redis://{HOST}:{_bound_port(container, 6379)}/0"


@pytest.mark.usefixtures("no_engine", "reachable")
def test_a_container_that_fails_to_start_is_removed() -> None:
    cls = services.kafka_container()
    with (
        mock.patch.object(cls, "start", autospec=True, side_effect=TimeoutError("no log")),
        mock.patch.object(cls, "stop", autospec=True) as stop,
        pytest.raises(TimeoutError, match="no log"),
    ):
        services.start_container("kafka", env={})
    stop.assert_called_once()


# -- the command line's bookkeeping ------------------------------------------------


def test_stop_and_restart_need_a_container_started_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(services, "STATE", tmp_path)
    assert services.main(["stop", "amqp"]) == 1
    assert "no amqp container was started here" in capsys.readouterr().err
    (tmp_path / "aws.id").write_text("c0ffee\n")
    assert services.main(["restart", "moto"]) == 1
    assert "aws: no restart" in capsys.readouterr().err


def test_stop_removes_the_container_and_forgets_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(services, "STATE", tmp_path)
    (tmp_path / "kafka.id").write_text("c0ffee\n")
    with mock.patch.object(services, "stop_container", autospec=True) as stop:
        assert services.main(["stop", "kafka"]) == 0
    stop.assert_called_once_with("c0ffee")
    assert not (tmp_path / "kafka.id").exists()


def test_start_turns_the_reaper_off_and_keeps_the_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container must outlive the command that started it."""
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(services, "STATE", tmp_path / "state")
    monkeypatch.setattr(testcontainers_config, "_ryuk_disabled", None)
    started = Running(url="kafka://127.0.0.1:32780", container_id="c0ffee")
    with mock.patch.object(services, "start_container", autospec=True, return_value=started):
        assert services.main(["start", "kafka"]) == 0
    assert testcontainers_config.ryuk_disabled is True
    assert capsys.readouterr().out == "kafka://127.0.0.1:32780\n"
    assert (tmp_path / "state" / "kafka.id").read_text() == "c0ffee\n"
