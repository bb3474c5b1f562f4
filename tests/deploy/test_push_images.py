"""deploy/push-images.sh: builds both images and pushes them to the
repositories Terraform created, logging in to their registry first. The
container tool, terraform and the AWS CLI are stubs that record their calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "push-images.sh"
REGISTRY = "123456789012.dkr.ecr.eu-west-3.amazonaws.com"
OUTPUT = f'{{"worker": "{REGISTRY}/fleet/worker", "cpu": "{REGISTRY}/fleet/cpu"}}'


def _stubs(tmp_path: Path, *, terraform_output: str | None = OUTPUT) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    record = f'echo "$(basename "$0") $*" >>{log}\n'
    stubs = {
        "tool": record + 'if [ "$1" = login ]; then cat >/dev/null; fi\n',
        "aws": record + "echo token\n",
        "terraform": record
        + (f"echo '{terraform_output}'\n" if terraform_output is not None else "exit 1\n"),
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
        path.chmod(0o755)
    return bin_dir, log


def _run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CONTAINER_TOOL": str(bin_dir / "tool"),
        "TERRAFORM": str(bin_dir / "terraform"),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_builds_and_pushes_both_images_and_prints_their_variables(tmp_path: Path) -> None:
    bin_dir, log = _stubs(tmp_path)
    proc = _run(bin_dir, "0.2.0", "/some/terraform")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[0] == "terraform -chdir=/some/terraform output -json ecr_repository_urls"
    # The two ends of the login pipe run at once: in either order.
    assert set(calls[1:3]) == {
        "aws ecr get-login-password --region eu-west-3",
        f"tool login --username AWS --password-stdin {REGISTRY}",
    }
    assert calls[3:] == [
        f"tool build -f {ROOT}/deploy/docker/Dockerfile -t {REGISTRY}/fleet/worker:0.2.0 {ROOT}",
        f"tool build -f {ROOT}/deploy/docker/Dockerfile.cpu -t {REGISTRY}/fleet/cpu:0.2.0 {ROOT}",
        f"tool push {REGISTRY}/fleet/worker:0.2.0",
        f"tool push {REGISTRY}/fleet/cpu:0.2.0",
    ]
    assert proc.stdout.splitlines() == [
        f'worker_image     = "{REGISTRY}/fleet/worker:0.2.0"',
        f'autoscaler_image = "{REGISTRY}/fleet/cpu:0.2.0"',
    ]


def test_without_the_repositories_nothing_is_built(tmp_path: Path) -> None:
    bin_dir, log = _stubs(tmp_path, terraform_output=None)
    proc = _run(bin_dir, "0.2.0")
    assert proc.returncode == 1
    assert "create_ecr_repositories" in proc.stderr
    assert not any(c.startswith("tool ") for c in log.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("tag", ["", "latest tag", "-x", "a:b"])
def test_a_bad_tag_is_refused(tmp_path: Path, tag: str) -> None:
    bin_dir, log = _stubs(tmp_path)
    proc = _run(bin_dir, tag)
    assert proc.returncode != 0
    assert not log.exists()
