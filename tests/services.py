"""Where the test tiers' services come from, and containers for them.

Each service (RabbitMQ for ``amqp``, Apache Kafka for ``kafka``, moto's AWS
server for ``aws``, Redis for ``redis``) has one source, in this order:

1. ``env``: its URL variable is set (``FLEET_TEST_AMQP_URL``, ...);
2. ``container``: a Docker engine answers, so testcontainers starts one;
3. ``script``: the project's local script starts a server (``scripts/*.sh``).

The engine check is bounded: it runs in a thread of its own and counts as "no
engine" when it has not answered within its timeout.

``scripts/test.sh`` asks this module from the shell (a service may also be named
by its script: ``rabbitmq``, ``moto``)::

    python -m tests.services choose amqp    print env, container or script
    python -m tests.services start amqp     start its container, print its URL
    python -m tests.services restart amqp   restart it: same ports, same data
    python -m tests.services stop amqp      remove it

A container started here outlives the command that started it (testcontainers'
reaper, which removes a session's containers when the session's process ends,
is off for them): ``stop`` removes it, by the id kept under
``.cache/containers``. Host ports are picked free on this machine and bound, so
that a restart keeps the URL. ``FLEET_TEST_<SERVICE>_IMAGE`` (for example
``FLEET_TEST_KAFKA_IMAGE``) overrides a service's image.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.rabbitmq import RabbitMqContainer
    from testcontainers.community.redis import RedisContainer
    from testcontainers.core.container import DockerContainer

Source = Literal["env", "container", "script"]

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "containers"  # <service>.id: the container this module started
ENGINE_TIMEOUT = 2.0  # seconds the engine check may take
START_TIMEOUT = 120  # seconds a started container has to answer
RESTART_TIMEOUT = 120.0  # seconds a restarted container has to log that it is ready

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
KAFKA_PORT = 9093  # KafkaContainer's client listener
MOTO_PORT = 5000  # motoserver/moto listens here
MOTO_SERVER = Path(__file__).resolve().parents[1] / "scripts" / "moto_server.py"
REDIS_PORT = 6379


def _moto_version() -> str:
    """The moto server image that matches the moto installed here (one tag per
    release); ``latest`` without one."""
    try:
        return importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        return "latest"


@dataclass(frozen=True, kw_only=True, slots=True)
class Service:
    """One service the tiers need."""

    name: str
    url_env: str  # the variable naming its URL
    script: str  # scripts/<script>.sh starts a local server
    image: str  # the container image, unless FLEET_TEST_<NAME>_IMAGE says otherwise
    ready_log: str | None = None  # what its log says once a (re)start is done

    @property
    def image_env(self) -> str:
        return f"FLEET_TEST_{self.name.upper()}_IMAGE"


SERVICES: dict[str, Service] = {
    "amqp": Service(
        name="amqp",
        url_env="FLEET_TEST_AMQP_URL",
        script="rabbitmq",
        image="rabbitmq:3.13-management",  # with the management plugin: depth reads it
        ready_log="Server startup complete",
    ),
    "kafka": Service(
        name="kafka",
        url_env="FLEET_TEST_KAFKA_URL",
        script="kafka",
        image="confluentinc/cp-kafka:7.9.0",  # Apache Kafka 3.9, as scripts/kafka.sh
        ready_log="Kafka Server started",
    ),
    "aws": Service(
        name="aws",
        url_env="FLEET_TEST_AWS_URL",
        script="moto",
        image=f"motoserver/moto:{_moto_version()}",
    ),
    "redis": Service(
        name="redis", url_env="FLEET_TEST_REDIS_URL", script="redis", image="redis:7.4"
    ),
}

# The broker settings scripts/kafka.sh writes that the tests rely on (a missing
# topic is an error, short sessions, one copy of everything), as the Confluent
# image's KAFKA_* variables.
KAFKA_SETTINGS: dict[str, str] = {
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_DELETE_TOPIC_ENABLE": "true",
    "KAFKA_NUM_PARTITIONS": "1",
    "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
    "KAFKA_MIN_INSYNC_REPLICAS": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "8",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}

# Queue figures in the management API (unacked counts) refresh every second, as
# scripts/rabbitmq.sh configures its node.
RABBITMQ_ERL_ARGS = "-rabbit collect_statistics_interval 1000"


def service_named(name: str) -> Service:
    """The service called ``name``, or whose local script is ``name``."""
    for service in SERVICES.values():
        if name in (service.name, service.script):
            return service
    raise KeyError(f"no service {name!r}; known: {', '.join(SERVICES)}")


# -- the decision ---------------------------------------------------------------


def choose(service: str, env: Mapping[str, str], engine_answers: Callable[[], bool]) -> Source:
    """Where ``service`` comes from: a URL in ``env`` wins, then a container when
    ``engine_answers()``, else the local script. The engine is asked only when
    no URL is set."""
    if env.get(service_named(service).url_env):
        return "env"
    if engine_answers():
        return "container"
    return "script"


def answers_within(check: Callable[[], bool], timeout: float) -> bool:
    """``check()`` run in a daemon thread: its answer, or False when it raised or
    has not returned within ``timeout`` seconds (it is then left behind)."""
    answer: list[bool] = []

    def run() -> None:
        with contextlib.suppress(Exception):
            answer.append(bool(check()))

    thread = threading.Thread(target=run, name="engine-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False
    return bool(answer) and answer[0]


def docker_ping(timeout: float) -> bool:
    """Whether the Docker engine testcontainers would use answers ``/_ping``; the
    engine is found the way testcontainers finds it (``tc.host`` in
    ``~/.testcontainers.properties``, ``DOCKER_HOST``, the Docker context, else
    the default socket). Raises when nothing answers."""
    import docker
    from docker.constants import DEFAULT_DOCKER_API_VERSION, DEFAULT_UNIX_SOCKET
    from testcontainers.core.docker_client import get_docker_host

    host = get_docker_host() or DEFAULT_UNIX_SOCKET
    if "unix://" in host:
        # the SDK leaves the socket of a refused connection open: try it here first
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(host.partition("unix://")[2])
    kwargs = docker.utils.kwargs_from_env()  # TLS settings (DOCKER_TLS_VERIFY, ...)
    kwargs["base_url"] = host
    api = docker.APIClient(
        version=DEFAULT_DOCKER_API_VERSION,  # a version given: no request made here
        timeout=int(max(timeout, 1)),
        use_ssh_client=host.startswith("ssh://"),
        **kwargs,
    )
    with contextlib.closing(api):
        response = api.get(f"{api.base_url}/_ping", timeout=timeout)
        return bool(response.status_code == 200 and response.text == "OK")


def engine_answers(timeout: float = ENGINE_TIMEOUT) -> bool:
    """Whether a Docker engine answers, within about ``timeout`` seconds."""
    return answers_within(lambda: docker_ping(timeout), timeout + 0.5)


# -- URLs -----------------------------------------------------------------------


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def amqp_url(host: str, port: int, management_port: int, user: str, password: str) -> str:
    """The broker at ``host:port`` with its management API beside it (the
    transport reads ``?management_url=``; the default vhost)."""
    management = f"http://{_netloc(host, management_port)}"
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return (
        f"amqp://{credentials}@{_netloc(host, port)}/?management_url={quote(management, safe='')}"
    )


def kafka_url(host: str, port: int) -> str:
    return f"kafka://{_netloc(host, port)}"


def http_url(host: str, port: int) -> str:
    return f"http://{_netloc(host, port)}"


def redis_url(host: str, port: int) -> str:
    return f"redis://{_netloc(host, port)}/0"


# -- containers -----------------------------------------------------------------


@contextlib.contextmanager
def _testcontainers_imports() -> Iterator[None]:
    """Some community modules of testcontainers apply a decorator testcontainers
    itself deprecates, which warns when the module is imported."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="The @wait_container_is_ready decorator is deprecated",
            category=DeprecationWarning,
        )
        yield


def rabbitmq_container() -> type[RabbitMqContainer]:
    with _testcontainers_imports():
        from testcontainers.community.rabbitmq import RabbitMqContainer
    return RabbitMqContainer


def kafka_container() -> type[KafkaContainer]:
    with _testcontainers_imports():
        from testcontainers.community.kafka import KafkaContainer
    return KafkaContainer


def redis_container() -> type[RedisContainer]:
    with _testcontainers_imports():
        from testcontainers.community.redis import RedisContainer
    return RedisContainer


def docker_container() -> type[DockerContainer]:
    from testcontainers.core.container import DockerContainer

    return DockerContainer


@dataclass(frozen=True, kw_only=True, slots=True)
class Running:
    """A container started for a service."""

    url: str
    container_id: str


def free_port() -> int:
    """A TCP port free on this machine now, for a container's port to be bound to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _removed_on_failure(container: DockerContainer) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise


def _start_amqp(image: str) -> Running:
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    user = password = "guest"  # the image lets guest log in from other hosts
    container = rabbitmq_container()(image, port=AMQP_PORT, username=user, password=password)
    container.with_exposed_ports(MANAGEMENT_PORT)
    container.with_bind_ports(AMQP_PORT, free_port())
    container.with_bind_ports(MANAGEMENT_PORT, free_port())
    container.with_env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", RABBITMQ_ERL_ARGS)
    with _removed_on_failure(container):
        container.start()  # returns once an AMQP connection opens
        management = (
            HttpWaitStrategy(MANAGEMENT_PORT, "/api/overview")
            .with_basic_credentials(user, password)
            .for_status_code(200)
            .with_startup_timeout(START_TIMEOUT)
        )
        management.wait_until_ready(container)
    host = container.get_container_host_ip()
    url = amqp_url(
        host,
        container.get_exposed_port(AMQP_PORT),
        container.get_exposed_port(MANAGEMENT_PORT),
        user,
        password,
    )
    return Running(url=url, container_id=container.get_container_id())


def _start_kafka(image: str) -> Running:
    container = kafka_container()(image, port=KAFKA_PORT).with_kraft()
    container.with_bind_ports(KAFKA_PORT, free_port())
    container.with_envs(**KAFKA_SETTINGS)
    with _removed_on_failure(container):
        container.start(timeout=START_TIMEOUT)
    url = kafka_url(container.get_container_host_ip(), container.get_exposed_port(KAFKA_PORT))
    return Running(url=url, container_id=container.get_container_id())


def _start_moto(image: str) -> Running:
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    container = docker_container()(image)
    container.with_bind_ports(MOTO_PORT, free_port())
    # moto's server with the MSK calls moto lacks, as scripts/moto.sh runs it
    container.with_volume_mapping(str(MOTO_SERVER), "/fleet/moto_server.py", mode="ro")
    container.with_kwargs(entrypoint=["python3", "/fleet/moto_server.py"])
    container.with_command(f"-H 0.0.0.0 -p {MOTO_PORT}")
    container.waiting_for(
        HttpWaitStrategy(MOTO_PORT, "/moto-api/")
        .for_status_code(200)
        .with_startup_timeout(START_TIMEOUT)
    )
    with _removed_on_failure(container):
        container.start()
    url = http_url(container.get_container_host_ip(), container.get_exposed_port(MOTO_PORT))
    return Running(url=url, container_id=container.get_container_id())


def _start_redis(image: str) -> Running:
    container = redis_container()(image, port=REDIS_PORT)
    container.with_bind_ports(REDIS_PORT, free_port())
    with _removed_on_failure(container):
        container.start()  # returns once Redis answers a PING
    url = redis_url(container.get_container_host_ip(), container.get_exposed_port(REDIS_PORT))
    return Running(url=url, container_id=container.get_container_id())


STARTERS: dict[str, Callable[[str], Running]] = {
    "amqp": _start_amqp,
    "kafka": _start_kafka,
    "aws": _start_moto,
    "redis": _start_redis,
}


def start_container(name: str, env: Mapping[str, str] | None = None) -> Running:
    """Start ``name``'s container (its image from ``FLEET_TEST_<NAME>_IMAGE`` when
    set), wait until it answers, and say where it is."""
    env = os.environ if env is None else env
    service = service_named(name)
    return STARTERS[service.name](env.get(service.image_env) or service.image)


def _state_file(service: Service) -> Path:
    return STATE / f"{service.name}.id"


def stop_container(container_id: str) -> None:
    """Remove the container (and its volumes); one already gone is fine."""
    import docker.errors
    from testcontainers.core.docker_client import DockerClient

    with contextlib.suppress(docker.errors.NotFound):
        DockerClient().client.containers.get(container_id).remove(force=True, v=True)


def restart_container(container_id: str, ready_log: str, timeout: float = RESTART_TIMEOUT) -> None:
    """Restart the container (its ports are bound, so its URL stays) and wait
    until its log says ``ready_log`` once more than before."""
    from testcontainers.core.docker_client import DockerClient

    container = DockerClient().client.containers.get(container_id)
    before = container.logs().decode(errors="replace").count(ready_log)
    container.restart(timeout=10)
    deadline = time.monotonic() + timeout
    while container.logs().decode(errors="replace").count(ready_log) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"container {container_id[:12]} did not log {ready_log!r}")
        time.sleep(0.5)


# -- command line ---------------------------------------------------------------


def _start_command(service: Service) -> None:
    from testcontainers.core.config import testcontainers_config

    # The reaper would remove the container once this process exits; the
    # caller removes it with `stop` instead.
    testcontainers_config.ryuk_disabled = True
    running = start_container(service.name)
    STATE.mkdir(parents=True, exist_ok=True)
    _state_file(service).write_text(running.container_id + "\n")
    print(running.url)


def _started_id(service: Service) -> str | None:
    path = _state_file(service)
    return path.read_text().strip() if path.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.services", description=__doc__)
    parser.add_argument("command", choices=["choose", "start", "restart", "stop"])
    parser.add_argument("service", help=f"one of {', '.join(SERVICES)} (or its script's name)")
    args = parser.parse_args(argv)
    try:
        service = service_named(args.service)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.command == "choose":
        print(choose(service.name, os.environ, engine_answers))
    elif args.command == "start":
        _start_command(service)
    else:
        container_id = _started_id(service)
        if container_id is None:
            print(f"no {service.name} container was started here", file=sys.stderr)
            return 1
        if args.command == "stop":
            stop_container(container_id)
            _state_file(service).unlink()
        elif service.ready_log is None:
            print(f"{service.name}: no restart", file=sys.stderr)
            return 1
        else:
            restart_container(container_id, service.ready_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
