"""The worker's CPU image, built once per test process by scripts/container.sh
(a debootstrap base, then deploy/docker/Dockerfile.cpu with podman), and its
processes run with ``buildah run --isolation chroot`` on the host's network.

Building needs no server, so the session hook builds it before a container
test takes the shared servers (tests/sharing.py): a build of a minute or two
never holds back a test that restarts a broker."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.sharing import file_lock

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/fleet-worker:cpu-test"
LOG = ROOT / ".cache" / "container-build.log"
TOOLS = ("debootstrap", "podman", "buildah")


class ImageBuildFailed(RuntimeError):
    """scripts/container.sh build failed; the message ends with its log's tail."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@functools.cache
def worker_image() -> str:
    """Build (or bring up to date) the image; its name. One process at a time:
    podman's layer cache makes every build after the first take seconds."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(ROOT / ".cache" / "container-build.lock"), LOG.open("w") as log:
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "container.sh"), "build"],
            cwd=ROOT,
            env={**os.environ, "FLEET_IMAGE": IMAGE},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=900,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(LOG.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildFailed(f"scripts/container.sh build exited {result.returncode}:\n{tail}")
    return result.stdout.strip().splitlines()[-1]


def inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        ["podman", "image", "inspect", image], capture_output=True, text=True, check=True
    ).stdout
    (data,) = json.loads(out)
    assert isinstance(data, dict)
    return data


def prepare_image() -> None:
    """Build the image ahead of a container test, before it holds the shared
    servers (installing the tools first where they are missing). A failure is
    left for the test's own fixture to report."""
    with contextlib.suppress(ImageBuildFailed, subprocess.TimeoutExpired):
        worker_image()
