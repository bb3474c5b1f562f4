"""The worker's CPU image, built here from a debootstrap base and run as a
container would run it: its own entrypoint, command, user and environment,
with the model repository mounted read-only at /models, against the test
RabbitMQ on the host's network."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np
import psutil
import pytest

from producer import Client
from tests.conftest import IN_CI, broker_url_for
from tests.container.image import ImageBuildFailed, inspect, missing_tools, worker_image
from tests.helpers import assert_digits_answers, direct_onnx, rows

pytestmark = [pytest.mark.container, pytest.mark.rabbitmq, pytest.mark.timeout(900)]

# The serving install: what the image must not carry (the tools extra).
TOOLS_ONLY = ("sklearn", "scipy", "matplotlib", "skl2onnx")
# A size that a serving image on a minimal Debian base stays under; today's is
# about 460 MB, so a heavy dependency slipping in shows here.
MAX_IMAGE_BYTES = 650_000_000


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built by scripts/container.sh, which installs debootstrap,
    podman and buildah where they are missing (as root, from apt)."""
    try:
        return worker_image()
    except ImageBuildFailed as exc:
        absent = missing_tools()
        if not absent:
            pytest.fail(str(exc), pytrace=False)
        message = f"the container tier needs {', '.join(absent)}, which could not be installed"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing tool is a failure)\n{exc}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    return inspect(image)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A working container of the image (buildah's: no process runs until asked)."""
    name = f"fleet-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["buildah", "from", "--pull-never", "--name", name, image],
        check=True,
        capture_output=True,
    )
    yield name
    subprocess.run(["buildah", "rm", name], check=False, capture_output=True)


def run_argv(
    container: str, config: dict[str, Any], *, env: dict[str, str], mounts: dict[Path, str]
) -> list[str]:
    """``buildah run`` of the image's own entrypoint and command, as its user."""
    argv = ["buildah", "run", "--isolation", "chroot"]
    for host, inside in mounts.items():
        argv += ["-v", f"{host}:{inside}:ro"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return [*argv, container, "--", *config["Config"]["Entrypoint"], *config["Config"]["Cmd"]]


def inside(
    container: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One command in the container, as the image's user."""
    flags = [f"-e{key}={value}" for key, value in (env or {}).items()]
    return subprocess.run(
        ["buildah", "run", "--isolation", "chroot", *flags, container, "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def printed(container: str, *argv: str) -> str:
    """What a command that prints, run in the container, printed. Under load
    ``buildah run`` (1.28, chroot isolation) now and then ends a short
    command with status 0 and nothing on its stdout; such a run is made once
    more, twice at most. Empty output three times, or a failure, fails."""
    for _ in range(3):
        done = inside(container, *argv)
        assert done.returncode == 0, done
        if done.stdout:
            return done.stdout
    raise AssertionError(f"{argv[0]} printed nothing, three times")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_image_runs_as_non_root_under_tini_with_a_healthcheck_and_no_tools(
    config: dict[str, Any], container: str
) -> None:
    cfg = config["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["/usr/bin/tini", "--", "fleet"] and cfg["Cmd"] == ["worker"]
    assert cfg["StopSignal"] == "SIGTERM"
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["FLEET_MODELS"] == "/models" and env["FLEET_HTTP_HOST"] == "0.0.0.0"
    assert config["Size"] < MAX_IMAGE_BYTES, f"image is {config['Size'] / 1e6:.0f} MB"
    print(f"\nimage {config['RepoTags'][0]}: {config['Size'] / 1e6:.0f} MB")

    assert printed(container, "id", "-u").strip() == "10001"
    imports = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = printed(container, "python3", "-c", imports, *TOOLS_ONLY, "onnxruntime", "aio_pika")
    assert json.loads(found.replace("'", '"')) == ["onnxruntime", "aio_pika"]
    # The models directory belongs to the image's user; nothing else it owns is writable to others.
    owner = printed(container, "stat", "-c", "%u %a", "/models")
    assert owner.split() == ["10001", "755"], owner


class ContainerWorker:
    """The image's entrypoint in a container, stderr to a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"event": raw})
        return out

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines()]

    def notices(self) -> list[str]:
        """Its warnings and errors, and the deliveries it left to be delivered again."""
        keep = ("warning", "error", "critical")
        return [
            str(line)
            for line in self.lines()
            if line.get("level") in keep or "redeliver" in str(line.get("event"))
        ][-20:]

    def wait_ready(self, port: int, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"worker exited {self.proc.returncode}: {self.events()[-10:]}"
            )
            try:
                with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                    body = json.load(reply)
                    if body.get("ready"):
                        return dict(body)
            except (URLError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout} s: {self.events()[-10:]}")

    def tini(self) -> psutil.Process:
        """tini, the image's first process (the one a container runtime signals)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.cmdline()[:1] == ["/usr/bin/tini"]:
                return child
        raise AssertionError("no tini under buildah run")

    def answered(self) -> int:
        (stopped,) = [line for line in self.lines() if line.get("event") == "worker stopped"]
        return int(stopped["answered"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)


def models_for_the_image(built_models: Path, tmp_path: Path, prefix: str) -> Path:
    """The demo models, copied (a symlink would point outside the mount) and
    readable by the image's user."""
    root = tmp_path / "models"
    for name in ("digits", "mlp"):
        shutil.copytree(built_models / name, root / f"{prefix}-{name}")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


async def test_worker_from_the_image_answers_and_drains_on_sigterm(
    image: str,
    config: dict[str, Any],
    container: str,
    built_models: Path,
    unique_model: str,
    tmp_path: Path,
) -> None:
    url = broker_url_for("amqp")
    models = models_for_the_image(built_models, tmp_path, unique_model)
    digits, mlp = f"{unique_model}-digits", f"{unique_model}-mlp"
    workers: list[ContainerWorker] = []

    def start(name: str) -> tuple[ContainerWorker, int]:
        port = free_port()
        env = {"FLEET_BROKER": url, "FLEET_HTTP_PORT": str(port), "FLEET_WORKER_ID": name}
        argv = run_argv(container, config, env=env, mounts={models: "/models"})
        worker = ContainerWorker(argv, tmp_path / f"{name}.log")
        workers.append(worker)
        return worker, port

    try:
        first, port = start("image-a")
        ready = first.wait_ready(port)
        assert ready["models"][mlp]["1"]["provider"] == "CPUExecutionProvider"
        # The image's own HEALTHCHECK command, run in the container, passes.
        check = inside(
            container, *config["Healthcheck"]["Test"][1:], env={"FLEET_HTTP_PORT": str(port)}
        )
        assert check.returncode == 0, check.stderr

        x_digits, x_mlp = rows(64, 40, seed=1), rows(256, 40, seed=2)
        async with Client(url, timeout=120.0) as client:
            got = await client.infer(digits, {"input": x_digits})
            assert_digits_answers(
                got["label"],
                got["probabilities"],
                direct_onnx(models / digits, {"input": x_digits}),
            )
            want = direct_onnx(models / mlp, {"input": x_mlp})
            got = await client.infer(mlp, {"input": x_mlp})
            np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)

            # Many one-row requests; SIGTERM to tini once the first is answered.
            total = 2000
            singles = rows(256, total, seed=3)
            calls = [
                asyncio.ensure_future(client.infer(mlp, {"input": singles[i : i + 1]}))
                for i in range(total)
            ]
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            first.tini().send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(first.proc.wait, 60)
            assert rc == 0, first.events()[-10:]
            assert "draining" in first.events()
            # What the first worker did not take is still queued: a second one answers it.
            second, port = start("image-b")
            second.wait_ready(port)
            answers = await asyncio.gather(*calls)
        second.tini().send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.proc.wait, 60) == 0
        want = direct_onnx(models / mlp, {"input": singles})["logits"]
        np.testing.assert_allclose(
            np.concatenate([a["logits"] for a in answers]), want, rtol=1e-5, atol=1e-6
        )
        # Each request answered once between the two (the first two calls by the first).
        counts = first.answered(), second.answered()
        assert sum(counts) == total + 2, (counts, first.notices(), second.notices())
        print(f"\nanswered: {first.answered()} by the drained worker, {second.answered()} after")
    finally:
        for worker in workers:
            worker.kill()
